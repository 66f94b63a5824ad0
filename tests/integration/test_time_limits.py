"""A stage runs under the time limits of the worker that runs it, whoever sent its message.

The API and the worker are built by the same factory, each from its own settings; Celery
copies a task's ``time_limit``/``soft_time_limit`` into every message its app sends, and a
worker applies a message's limits before its own. Here the API and the worker disagree on
``PLANNING_TIMEOUT``, and the worker's value must win both ways.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.app import create_app
from orchestrator.settings import Settings
from orchestrator.states import State
from tasks.chain import make_enqueuer, stage_queue
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, stage_pid, start_with_a_hang, transitions
from tests.support.downstream_server import Reply
from tests.support.processes import Service, start_worker, wait_for

pytestmark = pytest.mark.integration

WORKER_TIMEOUT = 4  # the worker's PLANNING_TIMEOUT; its hard limit is 4 + 1 s of grace


@pytest.fixture
def deployment(private_database, redis_url, downstream, log_dir
               ) -> Iterator[tuple[dict[str, str], Service]]:
    """A worker of the test's own with PLANNING_TIMEOUT=4 and its environment: prefork,
    the pool in which Celery's own time limits (and a message's) apply at all."""
    env = make_env(private_database, redis_url, downstream, PLANNING_TIMEOUT=WORKER_TIMEOUT,
                   HARD_TIMEOUT_GRACE=1)
    worker = start_worker(f"limits-worker-{uuid.uuid4().hex[:6]}", env, log_dir,
                          pool="prefork")
    yield env, worker
    worker.stop()


def api_with(env: dict[str, str], planning_timeout: float) -> Api:
    """The real API app (and so its real Celery enqueuer) of the same deployment, with a
    PLANNING_TIMEOUT of its own."""
    settings = Settings.from_env({**env, "PLANNING_TIMEOUT": str(planning_timeout)})
    return Api(create_app(settings).test_client())


def attempts(job: dict[str, Any], stage: str) -> list[tuple[int, str, str | None]]:
    return [(s["attempt_number"], s["status"], s["error_message"])
            for s in job["stages"] if s["stage_name"] == stage]


def test_a_sender_with_a_longer_limit_does_not_extend_the_workers(deployment, downstream):
    env, worker = deployment
    api = api_with(env, planning_timeout=600)
    job_id = uuid.uuid4()
    # Given an API whose PLANNING_TIMEOUT is 600 s, and a PLANNING call that hangs
    release = start_with_a_hang(api, downstream, job_id, "PLANNING", hang_for=60)
    # When the pool process running it freezes (SIGSTOP: neither the HTTP timeout nor the
    # soft limit's exception can end the attempt, only Celery's hard limit)
    pid = wait_for(lambda: stage_pid(worker, job_id, "PLANNING", 1), 20, "PLANNING's pid")
    os.kill(pid, signal.SIGSTOP)
    try:
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    finally:
        release.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    # Then the worker's own hard limit (4 + 1 s) killed it, not the API's (610 s), and the
    # attempt was closed as a timeout of the worker's 4 s, then retried
    assert job["current_state"] == "COMPLETED", job
    assert transitions(job) == HAPPY_PATH
    (first_number, first_status, first_error), second = attempts(job, "PLANNING")
    assert (first_number, first_status) == (1, "FAILED") and second[:2] == (2, "SUCCESS")
    assert f"timed out after {WORKER_TIMEOUT}s (hard time limit" in (first_error or "")
    assert worker.has_event("stage.timeout", job_id=str(job_id), stage="PLANNING", attempt=1)
    assert any(str(e.get("message", "")).startswith("Hard time limit (5.0s) exceeded")
               for e in worker.events())


def test_a_sender_with_a_shorter_limit_does_not_cut_the_workers(deployment, downstream):
    env, worker = deployment
    api = api_with(env, planning_timeout=1)
    job_id = uuid.uuid4()
    # Given an API whose PLANNING_TIMEOUT is 1 s, and a terraform execution service that
    # takes 2 s to answer: longer than the API's limit, well within the worker's 4 s
    downstream.script(job_id, "PLANNING", Reply(delay=2))
    # When the job starts
    assert api.start(job_id).status_code == 202
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    # Then its first PLANNING attempt ran to the end under the worker's limit
    assert job["current_state"] == "COMPLETED", job
    assert attempts(job, "PLANNING") == [(1, "SUCCESS", None)]
    assert not worker.has_event("stage.timeout", job_id=str(job_id))


def test_the_api_enqueuer_puts_no_time_limit_in_its_messages(database_url, redis_url,
                                                             downstream):
    # Given the enqueuer as the API builds it, with stage timeouts of its own, on a queue
    # no worker consumes
    env = make_env(database_url, redis_url, downstream, PLANNING_TIMEOUT=600)
    settings = Settings.from_env(env)
    enqueue = make_enqueuer(settings)
    broker = redis.Redis.from_url(settings.broker_url or "")
    queue = stage_queue(settings.celery_queue, State.PLANNING)
    try:
        # When it sends a job's chain
        enqueue(uuid.uuid4(), State.PLANNING, "corr-limits")
        raw = wait_for(lambda: broker.lrange(queue, 0, -1), 10, "the message in the broker")
    finally:
        broker.delete(queue)
        broker.close()
    # Then the message, as stored in the broker, carries no time limit, nor does any
    # stage of the chain it carries
    (message,) = [json.loads(m) for m in raw]
    headers = message["headers"]
    assert headers["task"] == "orchestrator.stage.planning"
    assert headers["timelimit"] == [None, None]
    body = json.loads(_decoded(message))
    for step in body[2]["chain"]:
        assert not {"time_limit", "soft_time_limit"} & set(step["options"]), step


def _decoded(message: dict[str, Any]) -> str:
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        return base64.b64decode(body).decode()
    return str(body)
