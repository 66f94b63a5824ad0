"""Prometheus metrics of the API: request counts and latencies, and the number of jobs
in each state read from PostgreSQL at scrape time (so every API process agrees)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from db.uow import PostgresUnitOfWork
from orchestrator.states import State


class _JobsByState(Collector):
    def __init__(self, uow: PostgresUnitOfWork):
        self.uow = uow

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("orchestrator_jobs", "Jobs by current state",
                                   labels=["state"])
        try:
            with self.uow() as jobs:
                counts = jobs.count_by_state()
        except Exception:  # the database is down: say nothing rather than fail the scrape
            return
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self, uow: PostgresUnitOfWork):
        self.registry = CollectorRegistry()
        self.requests = Counter("orchestrator_api_requests_total", "API requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("orchestrator_api_request_seconds", "API request latency",
                                 ["route"], registry=self.registry)
        self.registry.register(_JobsByState(uow))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
