"""Every way a stage can go wrong, over real HTTP against a downstream that really
misbehaves, on real worker processes. Short limits come from configuration only."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid

import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import (
    HAPPY_PATH,
    Api,
    attempt_run,
    stage_pid,
    transitions,
    wrote_nothing,
)
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

pytestmark = pytest.mark.integration

# ENRICHING's timeout is far beyond any wait of these tests: in the cancellation test,
# nothing but the cancellation can end its call.
LIMITS = {
    "PLANNING_TIMEOUT": 5, "PARSING_TIMEOUT": 1.5, "ENRICHING_TIMEOUT": 600,
    "COSTING_TIMEOUT": 5, "PARSING_MAX_RETRIES": 2, "ENRICHING_MAX_RETRIES": 1,
    "COSTING_MAX_RETRIES": 2, "PLANNING_MAX_RETRIES": 2, "HARD_TIMEOUT_GRACE": 1,
    "RETRY_BACKOFF_BASE": 0.3, "RETRY_BACKOFF_MAX": 5, "RETRY_JITTER": "false",
}


@pytest.fixture(scope="module")
def failing(module_database, redis_url, downstream, log_dir):
    """A worker of the default pool (threads)."""
    env = make_env(module_database, redis_url, downstream, **LIMITS)
    worker = start_worker("failures-worker", env, log_dir)
    yield Api(create_app(Settings.from_env(env)).test_client()), worker
    worker.stop()


@pytest.fixture(scope="module")
def failing_prefork(database_url, redis_url, downstream, log_dir):
    """The same with ``-P prefork``, in a deployment (database) of its own."""
    from db.migrate import upgrade
    from tests.support.services import postgres_database

    with postgres_database(database_url) as url:
        upgrade(url)
        env = make_env(url, redis_url, downstream, **LIMITS)
        worker = start_worker("failures-prefork-worker", env, log_dir, pool="prefork")
        yield Api(create_app(Settings.from_env(env)).test_client()), worker
        worker.stop()


def attempts(job, stage):
    return [(s["attempt_number"], s["status"]) for s in job["stages"] if s["stage_name"] == stage]


def test_transient_errors_are_retried_with_growing_gaps(failing, downstream):
    api, worker = failing
    job_id = uuid.uuid4()
    # Given a plan interpreter that answers 503, then 502, then works
    downstream.script(job_id, "PARSING", {1: Reply(503, {"error": "busy"}),
                                          2: Reply(502, "bad gateway")})
    api.start(job_id)
    job = api.wait_state(job_id, "COMPLETED", "FAILED")
    # Then the job completes after two retries, each attempt its own row
    assert job["current_state"] == "COMPLETED"
    assert transitions(job) == HAPPY_PATH
    assert attempts(job, "PARSING") == [(1, "FAILED"), (2, "FAILED"), (3, "SUCCESS")]
    assert job["retry_count"] == 2
    failed = [s["error_message"] for s in job["stages"] if s["status"] == "FAILED"]
    assert failed == ["PARSING attempt 1/3: HTTP 503 from plan interpreter: busy",
                      "PARSING attempt 2/3: HTTP 502 from plan interpreter: bad gateway"]
    # And the service saw the real attempt numbers, spaced by the configured backoff
    calls = downstream.calls_for(job_id, "PARSING")
    assert [c.attempt for c in calls] == [1, 2, 3]
    assert calls[0].before(calls[1]) and calls[1].before(calls[2])  # one at a time
    first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    assert first_gap >= 0.3 and second_gap >= 0.6  # base 0.3 × 2^(k−1), jitter off
    scheduled = [e["delay_s"] for e in worker.events()
                 if e.get("event") == "stage.retry_scheduled" and e.get("job_id") == str(job_id)]
    assert scheduled == [0.3, 0.6]


def test_retry_after_is_honoured(failing, downstream):
    api, worker = failing
    job_id = uuid.uuid4()
    downstream.script(job_id, "COSTING", {1: Reply(429, {"error": "slow down"},
                                                   headers={"Retry-After": "2"})})
    api.start(job_id)
    job = api.wait_state(job_id, "COMPLETED", "FAILED")
    assert job["current_state"] == "COMPLETED"
    calls = downstream.calls_for(job_id, "COSTING")
    assert calls[1].at - calls[0].at >= 2.0  # never sooner than the service asked
    assert worker.has_event("stage.retry_scheduled", job_id=str(job_id), delay_s=2.0)


def test_a_hanging_service_costs_one_timeout_per_attempt(failing, downstream):
    api, worker = failing
    job_id = uuid.uuid4()
    # Given a plan interpreter that never answers (until the test ends): PARSING_TIMEOUT=1.5,
    # 2 retries
    never = threading.Event()
    downstream.script(job_id, "PARSING", Reply(release=never, hang_for=600))
    try:
        api.start(job_id)
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        calls = [downstream.wait_ended(downstream.wait_call(job_id, "PARSING", n))
                 for n in (1, 2, 3)]
    finally:
        never.set()
    # Then three attempts time out and the job fails
    assert job["current_state"] == "FAILED"
    assert attempts(job, "PARSING") == [(1, "FAILED"), (2, "FAILED"), (3, "FAILED")]
    # And each was ended by the worker itself: it hung up on a service that never
    # answered, before calling again, after waiting at least the timeout, and the timeout
    # ended it (not Celery's hard limit, not a lost worker)
    assert [(c.attempt, c.replied_at) for c in calls] == [(1, None), (2, None), (3, None)]
    assert all(c.disconnected_at is not None for c in calls)
    assert calls[0].before(calls[1]) and calls[1].before(calls[2])
    assert len(downstream.calls_for(job_id, "PARSING")) == 3
    for stage in job["stages"][1:]:
        assert stage["duration_ms"] >= 1400, stage
        assert "timed out after 1.5s" in stage["error_message"], stage
        assert "hard time limit" not in stage["error_message"], stage
    assert job["error_message"].startswith("PARSING attempt 3/3: timed out after 1.5s")
    assert "retries exhausted after 3 attempts" in job["error_message"]
    assert job["retry_count"] == 2
    assert worker.has_event("stage.timeout", job_id=str(job_id), stage="PARSING", attempt=3)
    assert worker.has_event("stage.gave_up", job_id=str(job_id), stage="PARSING")


@pytest.mark.parametrize(("stage", "reply", "message"), [
    ("COSTING", Reply(400, {"error": {"code": "bad", "message": "unsupported currency"}}),
     "COSTING attempt 1/3: HTTP 400 from cost calculator: unsupported currency"),
    ("ENRICHING", Reply(200, "<html><body>Welcome to nginx</body></html>"),
     "ENRICHING attempt 1/2: HTTP 200 from pricing enricher is not JSON: <html><body>Welcome "
     "to nginx</body></html>"),
    ("PARSING", Reply(200, "[1, 2]"),
     "PARSING attempt 1/3: HTTP 200 from plan interpreter is JSON but not an object"),
    ("PLANNING", Reply(200, {"plan": "somewhere"}),
     "PLANNING attempt 1/3: HTTP 200 from terraform execution has no plan_reference"),
    ("COSTING", Reply(200, {"currency": "USD"}),
     "COSTING attempt 1/3: HTTP 200 from cost calculator has no result_reference"),
    ("PARSING", Reply(404, "no such plan"),
     "PARSING attempt 1/3: HTTP 404 from plan interpreter: no such plan"),
])
def test_permanent_errors_fail_the_job_at_once(failing, downstream, stage, reply, message):
    api, _ = failing
    job_id = uuid.uuid4()
    downstream.script(job_id, stage, reply)
    api.start(job_id)
    job = api.wait_state(job_id, "COMPLETED", "FAILED")
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == message
    assert job["retry_count"] == 0
    assert len(downstream.calls_for(job_id, stage)) == 1
    assert attempts(job, stage) == [(1, "FAILED")]
    assert transitions(job)[-1] == (stage, "FAILED")


def test_retries_exhausted_says_so_and_why(failing, downstream):
    api, _ = failing
    job_id = uuid.uuid4()
    downstream.script(job_id, "COSTING", Reply(500, {"error": "database on fire"}))
    api.start(job_id)
    job = api.wait_state(job_id, "COMPLETED", "FAILED")
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == ("COSTING attempt 3/3: HTTP 500 from cost calculator: "
                                    "database on fire (retries exhausted after 3 attempts)")
    assert [c.attempt for c in downstream.calls_for(job_id, "COSTING")] == [1, 2, 3]
    assert job["retry_count"] == 2


@pytest.mark.parametrize("pool", ["failing", "failing_prefork"])
def test_cancellation_stops_the_stage_in_flight(pool, request, downstream):
    # threads: the call is cut on its socket; prefork: its process gets SIGUSR1
    api, worker = request.getfixturevalue(pool)
    job_id = uuid.uuid4()
    # Given an ENRICHING call the service never answers, with a timeout 10 minutes away
    # (so only the cancellation can end it while this test waits)
    never = threading.Event()
    downstream.script(job_id, "ENRICHING", Reply(release=never, hang_for=600))
    try:
        api.start(job_id)
        call = downstream.wait_call(job_id, "ENRICHING", 1)
        pid = wait_for(lambda: stage_pid(worker, job_id, "ENRICHING", 1), 30,
                       "its pool process")
        # When an operator fails the job
        failed_at = downstream.mark()
        assert api.fail(job_id, "cancelled by test").status_code == 200
        # Then the worker hangs up on the service, after the fail and because of it
        downstream.wait_ended(call, timeout=60)
        run = wait_for(lambda: attempt_run(worker, job_id, "ENRICHING", 1), 60,
                       "the cancelled attempt's run to end")
    finally:
        never.set()
    assert call.disconnected_at is not None and call.replied_at is None
    assert call.ended > failed_at
    # And the run wrote nothing, the attempt is closed as cancelled, and COSTING never
    # starts
    assert wrote_nothing(run), run
    job = api.job(job_id)
    assert job["current_state"] == "FAILED" and job["error_message"] == "cancelled by test"
    assert [(s["stage_name"], s["attempt_number"], s["status"], s["error_message"])
            for s in job["stages"]][-1] == ("ENRICHING", 1, "FAILED", "cancelled")
    assert transitions(job)[-1] == ("ENRICHING", "FAILED")
    assert not downstream.calls_for(job_id, "COSTING")
    # And the worker logged it as what it was: a cancellation, saying who and why; never
    # a timeout (prefork's cancel and its soft time limit are the same signal)
    cancelled = [e for e in run if e.get("event") == "stage.cancelled"]
    assert [(e["cancelled_by"], e["error"]) for e in cancelled] == [
        ("failed by operator via the API", "cancelled by test")], run
    assert not worker.has_event("stage.timeout", job_id=str(job_id)), run
    # And the pool process was interrupted, not killed: it logged its run's end itself
    # (attempt_run reads that process's lines only), and lives on
    os.kill(pid, 0)


def test_the_hard_time_limit_is_retried_like_any_timeout(failing_prefork, downstream):
    # Celery's hard time limit kills a pool process: a prefork worker's. (A threads
    # worker's calls are cut at their deadline by its watchdog instead, see above.)
    api, worker = failing_prefork
    job_id = uuid.uuid4()
    # Given a PARSING attempt whose pool process freezes (SIGSTOP: the soft limit's
    # exception can never be raised, so only Celery's hard limit can end it)
    release = threading.Event()
    downstream.script(job_id, "PARSING", {1: Reply(release=release, hang_for=30)})
    api.start(job_id)
    call = downstream.wait_call(job_id, "PARSING", 1)
    pid = wait_for(lambda: stage_pid(worker, job_id, "PARSING", 1), 30, "PARSING to start")
    os.kill(pid, signal.SIGSTOP)
    try:
        # Then the hard limit kills it, the attempt is closed as timed out, and the retry
        # completes the job
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=40)
    finally:
        release.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert job["current_state"] == "COMPLETED", job
    assert transitions(job) == HAPPY_PATH
    assert attempts(job, "PARSING") == [(1, "FAILED"), (2, "SUCCESS")]
    # The frozen attempt's connection closed (its process killed) before the retry called
    retry = downstream.wait_call(job_id, "PARSING", 2)
    assert downstream.wait_ended(call).disconnected_at is not None
    assert call.before(retry)
    first = next(s for s in job["stages"] if s["stage_name"] == "PARSING")
    assert "hard time limit" in first["error_message"]
    assert job["retry_count"] == 1
    assert worker.has_event("lock.broken", job_id=str(job_id))


def test_a_stage_that_keeps_killing_its_worker_is_capped(private_database, redis_url,
                                                         downstream, log_dir):
    # Given a worker whose poison cap is 2 lost attempts, with quick lock expiry and
    # recovery, and a PLANNING service that never answers (until the test ends)
    env = make_env(private_database, redis_url, downstream, MAX_LOST_ATTEMPTS=2, LOCK_TTL=2,
                   RECOVERY_STALE_AFTER=2, RECOVERY_INTERVAL=0.5)
    api = Api(create_app(Settings.from_env(env)).test_client())
    # prefork: each killed pool process is replaced, so one worker sees every attempt
    worker = start_worker("poison-worker", env, log_dir, pool="prefork")
    never = threading.Event()
    job_id = uuid.uuid4()
    downstream.script(job_id, "PLANNING", Reply(release=never, hang_for=600))
    try:
        api.start(job_id)
        # When each attempt's pool process dies (SIGKILL) while the service has its call
        # (not merely after the attempt started: a kill before the call is sent is a
        # different story, with a call fewer)
        calls = []
        for attempt in (1, 2):
            calls.append(downstream.wait_call(job_id, "PLANNING", attempt, timeout=60))
            pid = wait_for(lambda a=attempt: stage_pid(worker, job_id, "PLANNING", a), 30,
                           f"PLANNING attempt {attempt}'s pool process")
            os.kill(pid, signal.SIGKILL)
            downstream.wait_ended(calls[-1])
        # Then the job fails with a message saying why, instead of looping forever
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    finally:
        never.set()
        worker.stop()
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == ("PLANNING attempt 3/5: gave up after 2 attempts ended "
                                    "with their worker lost")
    assert [(s["attempt_number"], s["status"], s["error_message"]) for s in job["stages"]] \
        == [(1, "FAILED", "worker lost"), (2, "FAILED", "worker lost"),
            (3, "FAILED", job["error_message"])]
    assert transitions(job) == [("UPLOADED", "PLANNING"), ("PLANNING", "FAILED")]
    # And the service saw each lost attempt once, one after the other, each ended by its
    # worker's death; the attempt that gave up never called it
    assert [c.attempt for c in downstream.calls_for(job_id, "PLANNING")] == [1, 2]
    assert all(c.disconnected_at is not None and c.replied_at is None for c in calls)
    assert calls[0].before(calls[1])
