"""The workers' stage metrics: what is counted, and the in-memory recorder each worker
process counts into.

A stage's thread only adds to a dict under a lock (about 0.5 µs a call, 2–3 µs for all of
a stage's calls): no
prometheus_client object (its labelled children cost several microseconds and, in
multiprocess mode, a file write), no I/O. A flusher thread (:mod:`tasks.metrics`) takes the
pending deltas every ``METRICS_FLUSH_INTERVAL`` and adds them up in Redis, where the API's
``/metrics`` reads every process's sum (:mod:`api.metrics`); or, with
``WORKER_METRICS_PORT``, the worker serves its own totals too.

Every recording call sits beside the log call of the same event (``stage.succeeded``,
``stage.retry_scheduled``, ``lock.lost``, …) with the same stage, so logs and metrics never
disagree, and neither depends on the other (``LOG_LEVEL`` silences logs, not metrics).

This module is pure Python: prometheus_client is imported only by :func:`families`, at
scrape time, because the API must set its multiprocess directory before that import.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from orchestrator.stages import STAGE_STATES


@dataclass(frozen=True)
class MetricDef:
    name: str
    help: str
    labels: tuple[str, ...]
    kind: str  # "counter", "histogram" or "gauge"


#: Upper bounds (seconds) of the attempt-duration buckets: a stage takes from milliseconds
#: to its timeout (300 s for PLANNING by default).
BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LE: tuple[str, ...] = (*(f"{b:g}" for b in BUCKETS), "+Inf")

ATTEMPT_SECONDS = MetricDef(
    "orchestrator_stage_attempt_seconds",
    "Duration of stage attempts by stage and outcome (success, reused, timeout, "
    "transient_error, permanent_error, cancelled)", ("stage", "outcome"), "histogram")
RETRIES = MetricDef("orchestrator_stage_retries_total",
                    "Retries scheduled after a failed attempt, by stage", ("stage",), "counter")
TIMEOUTS = MetricDef("orchestrator_stage_timeouts_total",
                     "Attempts that used up their stage's timeout", ("stage",), "counter")
FAILURES = MetricDef("orchestrator_stage_failures_total",
                     "Jobs failed by a stage (permanent error or retries exhausted)",
                     ("stage",), "counter")
LOCK_LOSSES = MetricDef("orchestrator_lock_losses_total",
                        "Job locks found expired or taken over while or after a stage ran",
                        ("stage",), "counter")
FENCED = MetricDef("orchestrator_fenced_writes_total",
                   "Stage writes refused because the job changed state or owner (fencing)",
                   ("stage",), "counter")
POSTPONEMENTS = MetricDef("orchestrator_stage_postponements_total",
                          "Stages postponed because PostgreSQL or the locks' Redis was "
                          "unavailable (run again after the backoff)", ("stage",), "counter")
RECOVERIES = MetricDef("orchestrator_recovery_resumes_total",
                       "Stalled jobs resumed by the workers' recovery passes", (), "counter")
DOWNSTREAM = MetricDef("orchestrator_downstream_responses_total",
                       "Replies of the downstream services by stage and HTTP status",
                       ("stage", "status"), "counter")
IN_FLIGHT = MetricDef("orchestrator_stages_in_flight",
                      "Stage tasks running now, summed over the live worker processes",
                      ("stage",), "gauge")

DEFINITIONS: tuple[MetricDef, ...] = (ATTEMPT_SECONDS, RETRIES, TIMEOUTS, FAILURES,
                                      LOCK_LOSSES, FENCED, POSTPONEMENTS, RECOVERIES,
                                      DOWNSTREAM, IN_FLIGHT)

#: A pending delta's key: (series name, label values), e.g.
#: ("orchestrator_stage_attempt_seconds_bucket", ("PLANNING", "success", "0.5")).
Key = tuple[str, tuple[str, ...]]


def encode(key: Key) -> str:
    """The Redis hash field of a series: ``name|value|value`` (no label value has a ``|``:
    they are stage names, outcomes, HTTP statuses and bucket bounds)."""
    return "|".join((key[0], *key[1]))


def decode(field: str) -> Key:
    name, *values = field.split("|")
    return name, tuple(values)


class _Tracking:
    """``with recorder.in_flight(stage):`` — one reusable object per stage (no state of
    its own, so any number of threads may be inside it at once)."""

    __slots__ = ("recorder", "stage")

    def __init__(self, recorder: Recorder, stage: str):
        self.recorder, self.stage = recorder, stage

    def __enter__(self) -> None:
        self.recorder._move(self.stage, 1)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.recorder._move(self.stage, -1)


class Recorder:
    """One process's stage metrics, counted in memory; :meth:`take` hands the deltas since
    the last take to the flusher. Thread-safe; every call costs one uncontended lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Key, float] = {}
        self._in_flight: dict[str, int] = {}
        self._tracking: dict[str, _Tracking] = {}

    # --- recording (the stage's thread) ----------------------------------------------------

    def _add(self, key: Key, amount: float = 1) -> None:
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + amount

    def attempt(self, stage: str, outcome: str, seconds: float) -> None:
        le = _LE[bisect.bisect_left(BUCKETS, seconds)]
        bucket = ("orchestrator_stage_attempt_seconds_bucket", (stage, outcome, le))
        total = ("orchestrator_stage_attempt_seconds_sum", (stage, outcome))
        with self._lock:
            pending = self._pending
            pending[bucket] = pending.get(bucket, 0) + 1
            pending[total] = pending.get(total, 0) + seconds

    def retry(self, stage: str) -> None:
        self._add((RETRIES.name, (stage,)))

    def timeout(self, stage: str) -> None:
        self._add((TIMEOUTS.name, (stage,)))

    def gave_up(self, stage: str) -> None:
        self._add((FAILURES.name, (stage,)))

    def lock_lost(self, stage: str) -> None:
        self._add((LOCK_LOSSES.name, (stage,)))

    def fenced(self, stage: str) -> None:
        self._add((FENCED.name, (stage,)))

    def postponed(self, stage: str) -> None:
        self._add((POSTPONEMENTS.name, (stage,)))

    def recovered(self, jobs: int) -> None:
        if jobs:
            self._add((RECOVERIES.name, ()), jobs)

    def downstream_status(self, stage: str, status: int) -> None:
        self._add((DOWNSTREAM.name, (stage, str(status))))

    def in_flight(self, stage: str) -> _Tracking:
        tracking = self._tracking.get(stage)
        if tracking is None:
            tracking = self._tracking.setdefault(stage, _Tracking(self, stage))
        return tracking

    def _move(self, stage: str, by: int) -> None:
        with self._lock:
            self._in_flight[stage] = self._in_flight.get(stage, 0) + by

    # --- flushing (the flusher's thread) ----------------------------------------------------

    def take(self) -> tuple[dict[Key, float], dict[str, int]]:
        """The deltas since the last take (now forgotten here), and the stages in flight."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return pending, dict(self._in_flight)

    def give_back(self, deltas: Mapping[Key, float]) -> None:
        """Deltas a flush could not deliver: counted again, sent with the next flush."""
        with self._lock:
            add_into(self._pending, deltas)


class NullRecorder(Recorder):
    """Records nothing: the default of a runner or client composed outside a worker
    (unit tests, benchmarks)."""

    def _add(self, key: Key, amount: float = 1) -> None:
        pass

    def attempt(self, stage: str, outcome: str, seconds: float) -> None:
        pass

    def _move(self, stage: str, by: int) -> None:
        pass


NO_METRICS = NullRecorder()


def add_into(totals: dict[Key, float], deltas: Mapping[Key, float]) -> None:
    for key, amount in deltas.items():
        totals[key] = totals.get(key, 0) + amount


def families(totals: Mapping[Key, float], in_flight: Mapping[str, float]
             ) -> Iterator[Any]:
    """Prometheus metric families of summed counters and in-flight counts: what the API's
    collector and a worker's own endpoint serve. Every stage appears in the gauge, 0 when
    idle; a family with no series yet is still announced (HELP/TYPE)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    by_name: dict[str, list[tuple[tuple[str, ...], float]]] = {}
    for (name, labels), value in totals.items():
        by_name.setdefault(name, []).append((labels, value))
    for d in DEFINITIONS:
        if d.kind == "counter":
            counter = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
            for labels, value in sorted(by_name.get(d.name, [])):
                if len(labels) == len(d.labels):
                    counter.add_metric(list(labels), value)
            yield counter
        elif d.kind == "histogram":
            yield _histogram(d, by_name, HistogramMetricFamily)
        else:
            gauge = GaugeMetricFamily(d.name, d.help, labels=list(d.labels))
            for state in STAGE_STATES:
                gauge.add_metric([state.value], in_flight.get(state.value, 0))
            yield gauge


def _histogram(d: MetricDef, by_name: Mapping[str, list[tuple[tuple[str, ...], float]]],
               family_class: Any) -> Any:
    """Buckets are stored one per bound (not cumulative), so that one observation is one
    increment; the cumulative buckets and the count are made here."""
    n = len(d.labels)
    counts: dict[tuple[str, ...], dict[str, float]] = {}
    for labels, value in by_name.get(f"{d.name}_bucket", []):
        if len(labels) == n + 1:
            counts.setdefault(labels[:n], {})[labels[n]] = value
    sums = {labels: value for labels, value in by_name.get(f"{d.name}_sum", [])}
    family = family_class(d.name, d.help, labels=list(d.labels))
    for labels in sorted(counts.keys() | sums.keys()):
        per_bound = counts.get(labels, {})
        running, buckets = 0.0, []
        for le in _LE:
            running += per_bound.get(le, 0)
            buckets.append((le, running))
        family.add_metric(list(labels), buckets, sums.get(labels, 0.0))
    return family


def metric_names() -> set[str]:
    """Every series name a scrape can show for these metrics (what PromQL may name)."""
    names: set[str] = set()
    for d in DEFINITIONS:
        if d.kind == "histogram":
            names |= {f"{d.name}_bucket", f"{d.name}_sum", f"{d.name}_count"}
        else:
            names.add(d.name)
    return names


def attempt_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of a failed attempt: ``timeout``, ``transient_error`` (worth
    retrying) or ``permanent_error``."""
    from orchestrator.errors import StageTimeout, TransientStageError

    if isinstance(exc, StageTimeout):
        return "timeout"
    return "transient_error" if isinstance(exc, TransientStageError) else "permanent_error"
