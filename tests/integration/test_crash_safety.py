"""Crash safety proven with real signals on real processes: SIGKILL in every stage, a
SIGSTOPped worker that wakes up after another took its job, a lock renewed past its TTL,
concurrent recovery passes, and a worker's graceful shutdown."""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from datetime import UTC, datetime

import pytest

from api.app import create_app
from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.service import recover
from orchestrator.settings import Settings
from orchestrator.states import State
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, start_with_a_hang, transitions
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

FAST_RECOVERY = {"LOCK_TTL": 2, "RECOVERY_STALE_AFTER": 2, "RECOVERY_INTERVAL": 0.5}
STAGES = ["PLANNING", "PARSING", "ENRICHING", "COSTING"]


@pytest.fixture
def pair(private_database, redis_url, downstream, log_dir):
    """Two workers on their own database and queue, with quick lock expiry and recovery."""
    env = make_env(private_database, redis_url, downstream, **FAST_RECOVERY)
    tag = uuid.uuid4().hex[:6]
    workers = [start_worker(f"pair-{tag}-{n}", env, log_dir) for n in "ab"]
    yield Api(create_app(Settings.from_env(env)).test_client()), workers, env
    for worker in workers:
        worker.stop()


def running_worker(workers, job_id, stage):
    return wait_for(lambda: next((w for w in workers if w.has_event(
        "stage.started", job_id=str(job_id), stage=stage)), None), 20, f"{stage} to start")


def stage_rows(job, stage):
    return [(s["attempt_number"], s["status"], s["error_message"])
            for s in job["stages"] if s["stage_name"] == stage]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_in_any_stage_and_the_job_still_completes_exactly_once(
        pair, downstream, stage):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    # Given the stage's service hangs on its first attempt
    hang = start_with_a_hang(api, downstream, job_id, stage)
    victim = running_worker(workers, job_id, stage)
    # When the worker running it is killed with SIGKILL (main process and pool)
    killed_at = datetime.now(UTC)
    victim.kill()
    hang.set()
    # Then the other worker resumes it once the lock expires, and the history is exact
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=30)
    resumed_at = next(datetime.fromisoformat(e["timestamp"]) for w in workers
                      for e in w.events() if e.get("event") == "recovery.resume"
                      and e.get("job_id") == str(job_id))
    print(f"\n{stage}: resumed {(resumed_at - killed_at).total_seconds():.2f} s after "
          f"SIGKILL (LOCK_TTL=2, RECOVERY_STALE_AFTER=2, RECOVERY_INTERVAL=0.5)")
    assert job["current_state"] == "COMPLETED", job
    assert transitions(job) == HAPPY_PATH
    assert stage_rows(job, stage) == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]
    assert [s["status"] for s in job["stages"]].count("SUCCESS") == 4
    later = STAGES[STAGES.index(stage) + 1:]
    assert all(len(downstream.calls_for(job_id, s)) == 1 for s in later)


def test_a_paused_worker_that_wakes_up_cannot_write(pair, downstream):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    hang = start_with_a_hang(api, downstream, job_id, "PARSING")
    paused = running_worker(workers, job_id, "PARSING")
    # Given the worker running PARSING is frozen (SIGSTOP) past the lock's TTL
    paused.signal(signal.SIGSTOP)
    try:
        # When the other worker takes the job over and finishes it
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=30)
        assert job["current_state"] == "COMPLETED"
        # And the frozen worker wakes up and gets its (stale) answer
        hang.set()
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(lambda: paused.has_event("stage.fenced_out", job_id=str(job_id)) or
             paused.has_event("lock.lost", job_id=str(job_id)), 20,
             "the woken worker to notice it lost the job")
    wait_for(lambda: paused.has_event("stage.skipped", job_id=str(job_id)) or
             paused.has_event("stage.fenced_out", job_id=str(job_id)), 20,
             "the woken worker's stage to end")
    # Then nothing it did reached the job: one history, one call per later stage
    job = api.job(job_id)
    assert transitions(job) == HAPPY_PATH
    assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]
    assert len(downstream.calls_for(job_id, "ENRICHING")) == 1
    assert len(downstream.calls_for(job_id, "COSTING")) == 1


def test_a_stage_longer_than_the_lock_ttl_keeps_its_lock(pair, downstream):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    # Given a PLANNING call that takes 3 × LOCK_TTL
    downstream.script(job_id, "PLANNING", Reply(delay=6))
    api.start(job_id)
    # Then the heartbeat keeps the lock and the job's progress fresh: no recovery, one call
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=40)
    assert job["current_state"] == "COMPLETED"
    assert len(downstream.calls_for(job_id, "PLANNING")) == 1
    assert stage_rows(job, "PLANNING") == [(1, "SUCCESS", None)]
    assert not any(w.has_event("recovery.resume", job_id=str(job_id)) for w in workers)


def test_sigterm_lets_the_running_stage_finish(pair, downstream):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    downstream.script(job_id, "PARSING", Reply(delay=2))
    api.start(job_id)
    leaving = running_worker(workers, job_id, "PARSING")
    # When the worker running PARSING is asked to stop: SIGTERM to its main process (what
    # `docker stop` and systemd's KillMode=mixed do) is Celery's warm shutdown
    os.kill(leaving.proc.pid, signal.SIGTERM)
    # Then it finishes PARSING before exiting, and the job goes on without recovery
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=30)
    assert job["current_state"] == "COMPLETED"
    assert stage_rows(job, "PARSING") == [(1, "SUCCESS", None)]
    assert leaving.proc.wait(timeout=20) == 0
    assert leaving.has_event("stage.succeeded", job_id=str(job_id), stage="PARSING")


def _recovery_pass(database_url, redis_url, prefix, barrier, results):
    import redis

    from tasks.lock import RedisLocks

    uow = PostgresUnitOfWork(make_engine(database_url, pool_size=1))
    locks = RedisLocks(redis.Redis.from_url(redis_url), prefix=prefix, ttl=5)
    sent: list[str] = []
    barrier.wait(timeout=30)
    recover(uow, locks, lambda job_id, state, cid: sent.append(str(job_id)),
            stale_after=0.5, limit=1000)
    results.put(sent)


def test_concurrent_recovery_passes_resume_each_job_once(private_database, redis_url):
    # (a database of its own: the session's workers run recovery passes too, and would
    # resume the stalled jobs below before the racing passes could)
    database_url = private_database
    # Given stalled jobs (started, no progress) and one whose lock is held
    uow = PostgresUnitOfWork(make_engine(database_url, pool_size=1))
    prefix = f"recovery-race-{uuid.uuid4().hex[:6]}:"
    ids = [uuid.uuid4() for _ in range(20)]
    with uow() as jobs:
        for job_id in ids:
            jobs.insert_if_absent(job_id, {}, None)
            jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        jobs.c.exec_driver_sql("UPDATE jobs SET last_progress_at = now() - interval '1 hour' "
                               "WHERE job_id = ANY(%(ids)s)", {"ids": ids})
    import redis

    redis.Redis.from_url(redis_url).set(f"{prefix}{ids[0]}", "someone", ex=30)
    # When four recovery passes run at the same moment in four processes
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_recovery_pass,
                         args=(database_url, redis_url, prefix, barrier, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    sent = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    # Then every stalled job is resumed exactly once, and the locked one not at all
    resumed = [job for batch in sent for job in batch]
    mine = [j for j in resumed if uuid.UUID(j) in ids]
    assert sorted(mine) == sorted(str(i) for i in ids[1:])


def test_a_redelivered_stage_of_a_finished_job_is_a_no_op(pair, downstream):
    from tasks.factory import create_celery_app

    api, workers, env = pair
    job_id = uuid.uuid4()
    api.start(job_id)
    before = api.wait_state(job_id, "COMPLETED", "FAILED")
    # When every stage's message is delivered again (as acks_late may after a crash)
    app = create_celery_app(Settings.from_env(env))
    for stage in STAGES:
        app.tasks[f"orchestrator.stage.{stage.lower()}"].apply_async((str(job_id), None))
    wait_for(lambda: sum(1 for w in workers for e in w.events()
                         if e.get("event") == "stage.skipped"
                         and e.get("job_id") == str(job_id)) == 4,
             20, "the four duplicates to be skipped")
    # Then nothing changed: no call, no attempt, no transition
    assert api.job(job_id) == before
    assert all(len(downstream.calls_for(job_id, s)) == 1 for s in STAGES)
