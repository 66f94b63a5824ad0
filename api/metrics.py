"""Prometheus metrics of the API: request counts and latencies, and the number of jobs
in each state read from PostgreSQL at scrape time (so every API process agrees), from
the counts the database keeps (:mod:`db.job_counts`): a scrape costs the same with ten
jobs or ten million.

Several processes, one answer: gunicorn runs the API in several worker processes, each
counting the requests it serves, and a scrape reaches only one of them. So under
``orchestrator api`` the counters live in prometheus_client's multiprocess mode: with
``PROMETHEUS_MULTIPROC_DIR`` set (:func:`cli.serve.use_multiprocess_metrics`, before
prometheus_client is first imported, which is when it picks its mode), every process
writes its values to its own files in that directory, and a scrape, whichever process
serves it, adds up the files of them all (``MultiProcessCollector``). Any other process
tree that writes to the same directory (e.g. worker processes, later) is added up too.
Without the variable (the Flask test client, several apps in one process) each app counts
in a registry of its own, in memory.

The workers' stage metrics run on other hosts, so they come through Redis: every worker
process adds its counts up there (:mod:`tasks.metrics`) and :class:`_StageMetrics` reads
the sums at scrape time, in one round trip.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import redis
from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from db.job_counts import jobs_by_state
from db.outbox import outbox_backlog
from db.uow import PostgresUnitOfWork
from orchestrator.logs import log_event
from orchestrator.metrics import Key, decode, families
from orchestrator.states import State

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger(__name__)

#: The live processes' in-flight counts, pruning the processes whose key expired (dead,
#: or silent for three flush intervals): KEYS[1] the set of processes, ARGV[1] the prefix
#: of their keys. Returns [stage, count, stage, count, ...] over every live process.
_IN_FLIGHT_SCRIPT = """
local out = {}
for _, process in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local counts = redis.call('HGETALL', ARGV[1] .. process)
  if #counts == 0 then
    redis.call('SREM', KEYS[1], process)
  end
  for i = 1, #counts do out[#out + 1] = counts[i] end
end
return out
"""


class _JobsByState(Collector):
    def __init__(self, uow: PostgresUnitOfWork):
        # One SELECT, committed by itself: no BEGIN/ROLLBACK round trips around it.
        self.engine = uow.engine.execution_options(isolation_level="AUTOCOMMIT")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("orchestrator_jobs", "Jobs by current state",
                                   labels=["state"])
        try:
            with self.engine.connect() as connection:
                counts = jobs_by_state(connection)
        except Exception:  # the database is down: say nothing rather than fail the scrape
            return
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class _OutboxBacklog(Collector):
    """The outboxes' backlog at scrape time, from their small indexes (:mod:`db.outbox`):
    an alert on ``orchestrator_notifications_pending`` or on the oldest's age says the
    receiver (or every worker's relay) has been away."""

    def __init__(self, uow: PostgresUnitOfWork):
        self.engine = uow.engine.execution_options(isolation_level="AUTOCOMMIT")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.engine.connect() as connection:
                backlog = outbox_backlog(connection)
        except Exception:  # the database is down: say nothing rather than fail the scrape
            return
        yield GaugeMetricFamily(
            "orchestrator_notifications_pending",
            "Terminal-event notifications not yet acknowledged by NOTIFY_URL",
            value=backlog["notifications_pending"])
        yield GaugeMetricFamily(
            "orchestrator_notifications_oldest_pending_seconds",
            "Age of the oldest notification not yet acknowledged (0: none)",
            value=backlog["oldest_pending_s"])
        yield GaugeMetricFamily(
            "orchestrator_enqueues_pending",
            "Started jobs whose chain is not yet sent to the broker",
            value=backlog["enqueues_pending"])


class _StageMetrics(Collector):
    """The workers' stage metrics summed in Redis (layout in :mod:`tasks.metrics`): the
    counters' hash and the live processes' in-flight counts in one pipelined round trip.
    Redis restarted empty reads as counters back at 0: a counter reset to ``rate()``."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.client, self.prefix = client, prefix
        self.in_flight = client.register_script(_IN_FLIGHT_SCRIPT)
        self._failing = False

    def read(self) -> tuple[dict[Key, float], dict[str, float]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(f"{self.prefix}counters")
        self.in_flight(keys=[f"{self.prefix}inflight:processes"],
                       args=[f"{self.prefix}inflight:"], client=pipe)
        raw, flat = pipe.execute()
        totals = {decode(field.decode()): float(value) for field, value in raw.items()}
        in_flight: dict[str, float] = {}
        for stage, count in zip(flat[::2], flat[1::2], strict=True):
            in_flight[stage.decode()] = in_flight.get(stage.decode(), 0) + int(count)
        return totals, in_flight

    def collect(self) -> Iterator[Metric]:
        try:
            totals, in_flight = self.read()
        except redis.RedisError as exc:  # Redis away: say nothing rather than fail the scrape
            if not self._failing:
                log_event(log, "metrics.read_failed", logging.WARNING, error=repr(exc))
            self._failing = True
            return
        self._failing = False
        yield from families(totals, in_flight)


def multiprocess_dir() -> str | None:
    """The directory every process's values are added up from, or None for in-process
    counting. Refuses a directory prometheus_client does not write to: one set after it
    was imported would be scraped empty while the counts stayed in memory."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return None
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"{MULTIPROCESS_DIR} was set after prometheus_client was "
                           "imported; set it before (cli.serve.use_multiprocess_metrics)")
    return directory


class Metrics:
    """The API's metrics and the registry a scrape reads. In-process: one registry per
    app, so several apps in one process do not collide. Multiprocess: the scrape reads
    the directory (every process's counters) and the jobs gauge, nothing in memory."""

    def __init__(self, uow: PostgresUnitOfWork, redis_client: redis.Redis | None = None,
                 stage_prefix: str = "metrics:"):
        self.registry = CollectorRegistry()
        directory = multiprocess_dir()
        if directory:
            MultiProcessCollector(self.registry, path=directory)
        # In multiprocess mode the counters write to this process's files, which the
        # collector above reads; registering them as well would serve them twice.
        counters = None if directory else self.registry
        self.requests = Counter("orchestrator_api_requests_total", "API requests",
                                ["method", "route", "status"], registry=counters)
        self.latency = Histogram("orchestrator_api_request_seconds", "API request latency",
                                 ["route"], registry=counters)
        self.registry.register(_JobsByState(uow))
        self.registry.register(_OutboxBacklog(uow))
        if redis_client is not None:
            self.registry.register(_StageMetrics(redis_client, stage_prefix))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
