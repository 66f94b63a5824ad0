"""Recovery resumes jobs nobody is running: after a crash between the API's commit and
its enqueue, and after a worker is killed with SIGKILL in the middle of a stage."""

from __future__ import annotations

import uuid

import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, start_with_a_hang, transitions
from tests.support.processes import start_worker, wait_for

pytestmark = pytest.mark.integration


def test_a_job_committed_but_never_enqueued_is_resumed(settings, worker, api):
    # Given an API whose process "dies" between the commit and the enqueue
    def crash(*_):
        raise ConnectionError("broker unreachable")

    broken = Api(create_app(settings, enqueuer=crash).test_client())
    job_id = uuid.uuid4()
    assert broken.start(job_id).status_code == 202
    assert api.job(job_id)["current_state"] == "PLANNING"

    # When the workers' relays look at the enqueue outbox (the start committed its row)
    # Then the job is sent and completes, with no state skipped or entered twice, well
    # before recovery's stale-after (a generous deadline: the shared worker may still be
    # busy with another test's stages)
    job = api.wait_state(job_id, "COMPLETED", "FAILED",
                         timeout=settings.recovery_stale_after + 120)
    assert transitions(job) == HAPPY_PATH
    assert worker.has_event("outbox.sent", job_id=str(job_id), stage="PLANNING", by="relay")


def test_sigkill_during_a_stage_then_another_worker_finishes_the_job(
        private_database, redis_url, downstream, log_dir):
    # Given two workers on their own database and queue, and a PARSING service that hangs
    # on attempt 1, which it has received
    env = make_env(private_database, redis_url, downstream)
    settings = Settings.from_env(env)
    api = Api(create_app(settings).test_client())
    first = start_worker("kill-a", env, log_dir)
    second = start_worker("kill-b", env, log_dir)
    try:
        job_id = uuid.uuid4()
        hang = start_with_a_hang(api, downstream, job_id, "PARSING")
        lost = downstream.call(job_id, "PARSING", 1)
        running = wait_for(
            lambda: next((w for w in (first, second)
                          if w.has_event("stage.started", job_id=str(job_id),
                                         stage="PARSING")), None),
            30, "the worker running PARSING")
        survivor = second if running is first else first

        # When the worker running PARSING is killed with SIGKILL, mid-call
        try:
            running.kill()
            downstream.wait_ended(lost)
        finally:
            hang.set()

        # Then the survivor resumes the job once the lock has expired and completes it
        job = api.wait_state(job_id, "COMPLETED", "FAILED",
                             timeout=settings.lock_ttl + settings.recovery_stale_after + 60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        parsing = [(s["attempt_number"], s["status"], s["error_message"])
                   for s in job["stages"] if s["stage_name"] == "PARSING"]
        assert parsing == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]
        assert [s["status"] for s in job["stages"]].count("SUCCESS") == 4
        assert job["retry_count"] == 0  # a lost worker is not the service's failure
        assert survivor.has_event("recovery.resume", job_id=str(job_id), stage="PARSING")
        # And the service saw the dead worker's call end before the survivor's arrived
        assert lost.disconnected_at is not None and lost.replied_at is None
        assert [c.attempt for c in downstream.calls_for(job_id, "PARSING")] == [1, 2]
        assert lost.before(downstream.call(job_id, "PARSING", 2))
    finally:
        first.stop()
        second.stop()
