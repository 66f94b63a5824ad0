"""The worker's in-memory stage metrics (orchestrator.metrics) and their flushing
(tasks.metrics), without Redis: what one recording adds, what a scrape shows, and that a
failed flush loses nothing."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.errors import PermanentStageError, StageTimeout, TransientStageError
from orchestrator.metrics import (
    NO_METRICS,
    Key,
    Recorder,
    attempt_outcome,
    decode,
    encode,
    families,
    metric_names,
)
from tasks.metrics import Flusher, SnapshotCollector, in_flight_ttl


class Collected:
    def __init__(self, totals: dict[Key, float], in_flight: dict[str, float]):
        self.args = totals, in_flight

    def collect(self) -> Any:
        return families(*self.args)


def scrape(totals: dict[Key, float], in_flight: dict[str, float] | None = None
           ) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collected(totals, in_flight or {}))
    return scrape_registry(registry)


def scrape_registry(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_an_attempt_lands_in_the_bucket_of_its_duration_and_a_scrape_cumulates():
    recorder = Recorder()
    for seconds in (0.5, 0.51, 1000):  # a bound is inclusive; past the last, +Inf
        recorder.attempt("PARSING", "success", seconds)
    deltas, _ = recorder.take()
    bucket = "orchestrator_stage_attempt_seconds_bucket"
    assert deltas == {(bucket, ("PARSING", "success", "0.5")): 1,
                      (bucket, ("PARSING", "success", "1")): 1,
                      (bucket, ("PARSING", "success", "+Inf")): 1,
                      ("orchestrator_stage_attempt_seconds_sum", ("PARSING", "success")):
                          1001.01}
    samples = scrape(deltas)
    labels = {("stage", "PARSING"), ("outcome", "success")}
    assert samples[(bucket, frozenset({*labels, ("le", "0.25")}))] == 0
    assert samples[(bucket, frozenset({*labels, ("le", "0.5")}))] == 1
    assert samples[(bucket, frozenset({*labels, ("le", "1")}))] == 2
    assert samples[(bucket, frozenset({*labels, ("le", "600")}))] == 2
    assert samples[(bucket, frozenset({*labels, ("le", "+Inf")}))] == 3
    assert samples[("orchestrator_stage_attempt_seconds_count", frozenset(labels))] == 3


def test_every_event_counts_under_its_own_name_and_labels():
    recorder = Recorder()
    recorder.retry("PLANNING")
    recorder.retry("PLANNING")
    recorder.timeout("COSTING")
    recorder.gave_up("COSTING")
    recorder.lock_lost("ENRICHING")
    recorder.fenced("ENRICHING")
    recorder.recovered(3)
    recorder.recovered(0)
    recorder.downstream_status("PLANNING", 503)
    samples = scrape(recorder.take()[0])
    assert {k: v for k, v in samples.items() if v} == {
        ("orchestrator_stage_retries_total", frozenset({("stage", "PLANNING")})): 2,
        ("orchestrator_stage_timeouts_total", frozenset({("stage", "COSTING")})): 1,
        ("orchestrator_stage_failures_total", frozenset({("stage", "COSTING")})): 1,
        ("orchestrator_lock_losses_total", frozenset({("stage", "ENRICHING")})): 1,
        ("orchestrator_fenced_writes_total", frozenset({("stage", "ENRICHING")})): 1,
        ("orchestrator_recovery_resumes_total", frozenset()): 3,
        ("orchestrator_downstream_responses_total",
         frozenset({("stage", "PLANNING"), ("status", "503")})): 1,
    }
    # and every sample name a scrape shows is one the dashboard may name
    assert {name for name, _ in samples} <= metric_names()


def test_take_hands_over_the_deltas_once_and_give_back_keeps_them():
    recorder = Recorder()
    recorder.retry("PLANNING")
    first, _ = recorder.take()
    assert first == {("orchestrator_stage_retries_total", ("PLANNING",)): 1}
    assert recorder.take()[0] == {}
    recorder.give_back(first)
    recorder.retry("PLANNING")
    assert recorder.take()[0] == {("orchestrator_stage_retries_total", ("PLANNING",)): 2}


def test_stages_in_flight_go_up_and_down_across_threads():
    recorder = Recorder()
    inside, leave = threading.Barrier(9), threading.Event()

    def stage() -> None:
        with recorder.in_flight("PLANNING"):
            inside.wait(10)
            leave.wait(10)

    threads = [threading.Thread(target=stage) for _ in range(8)]
    for t in threads:
        t.start()
    inside.wait(10)
    assert recorder.take()[1] == {"PLANNING": 8}
    leave.set()
    for t in threads:
        t.join(10)
    assert recorder.take()[1] == {"PLANNING": 0}
    # and a scrape shows every stage, idle ones at 0
    samples = scrape({}, {"PLANNING": 2})
    assert {dict(labels)["stage"]: v for (name, labels), v in samples.items()
            if name == "orchestrator_stages_in_flight"} == {
        "PLANNING": 2, "PARSING": 0, "ENRICHING": 0, "COSTING": 0}


def test_the_null_recorder_records_nothing():
    NO_METRICS.attempt("PLANNING", "success", 1)
    NO_METRICS.retry("PLANNING")
    with NO_METRICS.in_flight("PLANNING"):
        assert NO_METRICS.take() == ({}, {})


@pytest.mark.parametrize(("error", "outcome"), [
    (StageTimeout("t"), "timeout"), (TransientStageError("t", status=503), "transient_error"),
    (PermanentStageError("p", status=400), "permanent_error")])
def test_a_failed_attempt_is_labelled_by_its_error(error, outcome):
    assert attempt_outcome(error) == outcome


def test_a_series_key_survives_its_redis_field():
    key = ("orchestrator_stage_attempt_seconds_bucket", ("PLANNING", "timeout", "+Inf"))
    assert decode(encode(key)) == key
    assert decode(encode(("orchestrator_recovery_resumes_total", ()))) == (
        "orchestrator_recovery_resumes_total", ())


class FlakySink:
    """Fails while ``down``; remembers what it was given otherwise."""

    def __init__(self) -> None:
        self.down = True
        self.written: list[tuple[dict, dict]] = []

    def write(self, deltas: dict, in_flight: dict) -> None:
        if self.down:
            raise ConnectionError("redis away")
        self.written.append((dict(deltas), dict(in_flight)))

    def forget(self) -> None:
        pass


def test_a_failed_flush_loses_nothing():
    recorder, sink = Recorder(), FlakySink()
    flusher = Flusher(recorder, sink, interval=3600)  # type: ignore[arg-type]
    recorder.retry("PLANNING")
    flusher.flush()  # Redis away: kept
    recorder.retry("PLANNING")
    sink.down = False
    flusher.flush()
    assert sink.written == [({("orchestrator_stage_retries_total", ("PLANNING",)): 2}, {})]


def test_a_worker_endpoint_sums_its_processes_and_drops_silent_ones_in_flight(
        tmp_path: Path):
    recorder = Recorder()
    sink = FlakySink()
    sink.down = False
    flusher = Flusher(recorder, sink, 3600, snapshot_dir=tmp_path)  # type: ignore[arg-type]
    recorder.retry("PLANNING")
    with recorder.in_flight("COSTING"):
        flusher.flush()
    # another process of the same worker, silent (dead) for a minute, left its snapshot
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({
        "pid": 1, "in_flight": {"COSTING": 5},
        "counters": [["orchestrator_stage_retries_total", ["PLANNING"], 2]]}))
    os.utime(dead, (time.time() - 60, time.time() - 60))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(tmp_path, max_age=16))
    samples = scrape_registry(registry)
    assert samples[("orchestrator_stage_retries_total",
                    frozenset({("stage", "PLANNING")}))] == 3
    assert samples[("orchestrator_stages_in_flight", frozenset({("stage", "COSTING")}))] == 1


def test_in_flight_counts_outlive_a_few_flushes():
    assert in_flight_ttl(5) == 16
    assert in_flight_ttl(0.05) == 2
