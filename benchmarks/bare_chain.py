"""The peer the orchestrator is measured against: a bare Celery chain of four tasks, each
one HTTP POST to the same downstream the orchestrator calls, and nothing else — no lock,
no database, no retries, no logs of its own. The last task stamps the chain's end in a
Redis hash so the benchmark can see it.

Run by ``benchmarks.versus`` as ``celery -A benchmarks.bare_chain worker`` with the same
broker, pool and concurrency as the orchestrator's worker, configured by environment:
``BARE_BROKER_URL``, ``BARE_QUEUE``, ``BARE_DOWNSTREAM`` (the downstream's base URL),
``BARE_DONE_KEY`` (the Redis hash), ``BARE_CONCURRENCY`` (sizes the HTTP pool as the
orchestrator's worker sizes its own). Celery's own defaults otherwise, as a team would
write it without the orchestrator.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import requests
from celery import Celery, chain

STAGES = ("planning", "parsing", "enriching", "costing")

app = Celery("bare", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BARE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    task_default_queue=os.environ.get("BARE_QUEUE", "bare"),
    task_serializer="json", accept_content=["json"], task_ignore_result=True,
    worker_hijack_root_logger=False,
)

#: A connection refused or reset is retried at once, up to three times, as a team would
#: (the orchestrator retries it too); any other error ends the chain.
RETRY: dict[str, Any] = {"autoretry_for": (requests.ConnectionError,), "max_retries": 3,
                         "default_retry_delay": 0}

_session = requests.Session()
_adapter = requests.adapters.HTTPAdapter(
    pool_maxsize=max(int(os.environ.get("BARE_CONCURRENCY", "10")), 1))
_session.mount("http://", _adapter)
_done: redis.Redis | None = None


def _post(stage: str, job_id: str) -> dict[str, Any]:
    base = os.environ.get("BARE_DOWNSTREAM", "http://127.0.0.1:1")
    response = _session.post(f"{base}/{stage}",
                             json={"job_id": job_id, "stage": stage.upper(), "attempt": 1,
                                   "input": {}}, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _stamp(job_id: str) -> None:
    global _done
    if _done is None:
        _done = redis.Redis.from_url(app.conf.broker_url)
    _done.hset(os.environ.get("BARE_DONE_KEY", "bare:done"), job_id, repr(time.time()))


@app.task(name="bare.planning", **RETRY)
def planning(job_id: str) -> None:
    _post("planning", job_id)


@app.task(name="bare.parsing", **RETRY)
def parsing(job_id: str) -> None:
    _post("parsing", job_id)


@app.task(name="bare.enriching", **RETRY)
def enriching(job_id: str) -> None:
    _post("enriching", job_id)


@app.task(name="bare.costing", **RETRY)
def costing(job_id: str) -> None:
    _post("costing", job_id)
    _stamp(job_id)


def configure(broker_url: str, queue: str) -> None:
    """Point this process's app (the benchmark's, which sends) at the worker's broker and
    queue."""
    app.conf.update(broker_url=broker_url, task_default_queue=queue)


def send(job_id: str, queue: str | None = None) -> None:
    """Start one chain (from the benchmark's process), every task of it on ``queue`` (by
    default the configured one)."""
    options = {"queue": queue} if queue else {}
    chain(*(task.si(job_id).set(**options)
            for task in (planning, parsing, enriching, costing))).apply_async()
