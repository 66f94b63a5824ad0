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
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from db.job_counts import jobs_by_state
from db.outbox import outbox_backlog
from db.uow import PostgresUnitOfWork
from orchestrator.states import State

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


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

    def __init__(self, uow: PostgresUnitOfWork):
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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
