"""Crash safety proven with real signals on real processes: SIGKILL in every stage, a
SIGSTOPped worker that wakes up after another took its job, a lock renewed past its TTL,
concurrent recovery passes, and a worker's graceful shutdown."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis

from api.app import create_app
from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.service import recover
from orchestrator.settings import Settings
from orchestrator.states import State
from tasks.lock import RedisLocks
from tests.conftest import make_env
from tests.integration.conftest import (
    HAPPY_PATH,
    Api,
    attempt_run,
    stage_rows,
    start_with_a_hang,
    transitions,
    wrote_nothing,
)
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.integration

# Quick lock expiry and recovery; stage timeouts far beyond any pause or hang of these
# tests, so Celery's time limits never end a stage they mean to end otherwise.
FAST_RECOVERY = {"LOCK_TTL": 2, "RECOVERY_STALE_AFTER": 2, "RECOVERY_INTERVAL": 0.5,
                 **{f"{s}_TIMEOUT": 120 for s in ("PLANNING", "PARSING", "ENRICHING",
                                                  "COSTING")}}
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
        "stage.started", job_id=str(job_id), stage=stage)), None), 30, f"{stage} to start")


def assert_owned_by_the_second_attempt(api, downstream, job_id) -> None:
    """Nothing of the first PARSING attempt was written: the job is still in PARSING, the
    first attempt closed as lost, the second still running, no later stage called."""
    job = api.job(job_id)
    assert job["current_state"] == "PARSING"
    assert transitions(job) == HAPPY_PATH[:2]
    assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"), (2, "RUNNING", None)]
    assert not downstream.calls_for(job_id, "ENRICHING")


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_in_any_stage_and_the_job_still_completes_exactly_once(
        pair, downstream, stage):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    # Given the stage's service hangs on its first attempt, which it has received
    hang = start_with_a_hang(api, downstream, job_id, stage)
    lost = downstream.call(job_id, stage, 1)
    victim = running_worker(workers, job_id, stage)
    # When the worker running it is killed with SIGKILL (main process and pool)
    killed_at = datetime.now(UTC)
    try:
        victim.kill()
        downstream.wait_ended(lost)
    finally:
        hang.set()
    # Then the other worker resumes it once the lock expires, and the history is exact
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
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
    # And the killed call was dropped by its dead worker before the resumed one arrived
    assert lost.disconnected_at is not None and lost.replied_at is None
    assert [c.attempt for c in downstream.calls_for(job_id, stage)] == [1, 2]
    assert lost.before(downstream.call(job_id, stage, 2))


def test_a_paused_worker_that_wakes_up_cannot_write(pair, downstream):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    stale, fresh = threading.Event(), threading.Event()
    downstream.script(job_id, "PARSING", {1: Reply(release=stale, hang_for=600),
                                          2: Reply(release=fresh, hang_for=600)})
    try:
        assert api.start(job_id).status_code == 202
        first = downstream.wait_call(job_id, "PARSING", 1)
        paused = running_worker(workers, job_id, "PARSING")
        # Given the worker running PARSING is frozen (SIGSTOP) past the lock's TTL
        paused.signal(signal.SIGSTOP)
        try:
            # When the other worker takes the job over and calls the service again
            second = downstream.wait_call(job_id, "PARSING", 2, timeout=60)
            # And the frozen worker's (stale) answer is waiting for it when it wakes up
            stale.set()
            downstream.wait_ended(first)
        finally:
            paused.signal(signal.SIGCONT)
        run = wait_for(lambda: attempt_run(paused, job_id, "PARSING", 1), 60,
                       "the woken worker's PARSING run to end")
        # Then that run wrote nothing, while the new owner's attempt is still in flight:
        # the job is in PARSING, the first attempt closed as lost, no later stage called
        assert wrote_nothing(run), run
        assert second.open
        assert_owned_by_the_second_attempt(api, downstream, job_id)
    finally:
        fresh.set()
    # And the new owner finishes the job with one history, one call per later stage
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["current_state"] == "COMPLETED", job
    assert transitions(job) == HAPPY_PATH
    assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"), (2, "SUCCESS", None)]
    assert [c.attempt for c in downstream.calls_for(job_id, "PARSING")] == [1, 2]
    assert len(downstream.calls_for(job_id, "ENRICHING")) == 1
    assert len(downstream.calls_for(job_id, "COSTING")) == 1


def test_a_worker_cut_off_from_redis_cannot_write(private_database, redis_url, downstream,
                                                  log_dir, tmp_path):
    """The fence alone: a worker that cannot reach Redis never learns it lost its lock
    (its heartbeat only fails to renew it), so when its answer comes, nothing but the
    fence in PostgreSQL stops it from writing over the new owner's stage."""
    # Given worker A, whose Redis (its broker and its locks) the test can take away, and
    # worker B on the machine's Redis, both on one database
    # (B cannot see A's lock, so only A's signs of life keep B away until the cut: a
    # stale delay of twice the lock's TTL leaves A's heartbeat room on a busy machine)
    cut_off = ThrowawayRedis(tmp_path).start()
    limits = {**FAST_RECOVERY, "RECOVERY_STALE_AFTER": 4}
    env_a = make_env(private_database, cut_off.url, downstream, **limits)
    env_b = make_env(private_database, redis_url, downstream, **limits)
    tag = uuid.uuid4().hex[:6]
    a = start_worker(f"cutoff-{tag}-a", env_a, log_dir)
    b = start_worker(f"cutoff-{tag}-b", env_b, log_dir)
    api = Api(create_app(Settings.from_env(env_a)).test_client())
    job_id = uuid.uuid4()
    stale, fresh = threading.Event(), threading.Event()
    downstream.script(job_id, "PARSING", {1: Reply(release=stale, hang_for=600),
                                          2: Reply(release=fresh, hang_for=600)})
    try:
        assert api.start(job_id).status_code == 202
        first = downstream.wait_call(job_id, "PARSING", 1)
        assert a.has_event("stage.started", job_id=str(job_id), stage="PARSING", attempt=1)
        # When A loses Redis mid-call, and B (seeing no lock and no progress) takes over
        cut_off.kill()
        second = downstream.wait_call(job_id, "PARSING", 2, timeout=60)
        assert b.has_event("recovery.resume", job_id=str(job_id), stage="PARSING")
        # And A's answer then arrives
        stale.set()
        downstream.wait_ended(first)
        # (its last line: releasing its lock fails, A being cut off from Redis)
        wait_for(lambda: a.has_event("lock.release_failed", job_id=str(job_id),
                                     stage="PARSING"), 60, "A's PARSING task to end")
        # Then A wrote nothing: B's attempt still owns the job, in PARSING; A's write was
        # fenced out, though A never learnt it had lost its lock
        assert first.replied_at is not None and second.open
        assert_owned_by_the_second_attempt(api, downstream, job_id)
        assert a.has_event("stage.fenced_out", job_id=str(job_id), stage="PARSING", attempt=1)
        assert not a.has_event("lock.lost", job_id=str(job_id))
        # And B finishes the job with one history
        fresh.set()
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"),
                                              (2, "SUCCESS", None)]
        assert len(downstream.calls_for(job_id, "ENRICHING")) == 1
    finally:
        stale.set()
        fresh.set()
        a.kill()  # cut off from its broker, it would only retry it until stopped
        a.stop()
        b.stop()
        cut_off.kill()


def test_a_stage_longer_than_the_lock_ttl_keeps_its_lock(pair, downstream, redis_url):
    api, workers, env = pair
    settings = Settings.from_env(env)
    ttl, stale_after = settings.lock_ttl, settings.recovery_stale_after
    locks = RedisLocks(redis.Redis.from_url(redis_url), prefix=settings.lock_key_prefix,
                       ttl=ttl)
    uow = PostgresUnitOfWork(make_engine(settings.database_url or "", pool_size=1))
    job_id = uuid.uuid4()
    # Given a PLANNING call answered only once three lock TTLs (and more than the TTL
    # plus the stale delay) have passed since the service received it
    release = threading.Event()
    downstream.script(job_id, "PLANNING", Reply(release=release, hang_for=600))
    probes: list[tuple[bool, list]] = []
    try:
        assert api.start(job_id).status_code == 202
        downstream.wait_call(job_id, "PLANNING", 1)
        arrived = time.monotonic()
        long_enough = arrived + max(3 * ttl, ttl + stale_after + 1)

        # Meanwhile, again and again, the lock is held and a recovery pass of the test's
        # own (the workers run theirs too) finds nothing to resume
        def probe() -> bool:
            probes.append((locks.is_locked(job_id),
                           recover(uow, locks, lambda *_: None, stale_after=stale_after)))
            return time.monotonic() >= long_enough

        wait_for(probe, long_enough - arrived + 60, "three lock TTLs to pass", interval=0.2)
    finally:
        release.set()
    # Then the heartbeat kept the lock and the job's progress fresh: no recovery, one call
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["current_state"] == "COMPLETED"
    assert len(probes) >= 3
    assert all(locked and resumed == [] for locked, resumed in probes), probes
    assert len(downstream.calls_for(job_id, "PLANNING")) == 1
    assert stage_rows(job, "PLANNING") == [(1, "SUCCESS", None)]
    assert not any(w.has_event("recovery.resume", job_id=str(job_id)) for w in workers)


def test_sigterm_lets_the_running_stage_finish(pair, downstream):
    api, workers, _ = pair
    job_id = uuid.uuid4()
    release = threading.Event()
    downstream.script(job_id, "PARSING", {1: Reply(release=release, hang_for=600)})
    try:
        api.start(job_id)
        call = downstream.wait_call(job_id, "PARSING", 1)
        leaving = running_worker(workers, job_id, "PARSING")
        # When the worker running PARSING is asked to stop: SIGTERM to its main process
        # (what `docker stop` and systemd's KillMode=mixed do) is Celery's warm shutdown,
        # begun while PARSING still waits for its answer
        os.kill(leaving.proc.pid, signal.SIGTERM)
        wait_for(lambda: "Warm shutdown" in leaving.log_path.read_text(errors="replace"), 30,
                 "the worker to begin its warm shutdown")
        assert call.open
    finally:
        release.set()
    # Then it finishes PARSING before exiting, and the job goes on without recovery
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["current_state"] == "COMPLETED"
    assert stage_rows(job, "PARSING") == [(1, "SUCCESS", None)]
    assert leaving.proc.wait(timeout=30) == 0
    assert leaving.has_event("stage.succeeded", job_id=str(job_id), stage="PARSING")
    assert downstream.wait_ended(call).replied_at is not None
    assert [c.attempt for c in downstream.calls_for(job_id, "PARSING")] == [1]
    assert not any(w.has_event("recovery.resume", job_id=str(job_id)) for w in workers)


def _recovery_pass(database_url, redis_url, prefix, barrier, results):
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
    assert before["current_state"] == "COMPLETED", before
    # When every stage's message is delivered again (as acks_late may after a crash)
    app = create_celery_app(Settings.from_env(env))
    for stage in STAGES:
        app.tasks[f"orchestrator.stage.{stage.lower()}"].apply_async((str(job_id), None))
    wait_for(lambda: sum(1 for w in workers for e in w.events()
                         if e.get("event") == "stage.skipped"
                         and e.get("job_id") == str(job_id)) == 4,
             30, "the four duplicates to be skipped")
    # Then nothing changed: no call, no attempt, no transition
    # (the notification's delivery status is the relay's, which may mark it skipped at
    # any moment after the job ended; its event is still the one and only)
    after = api.job(job_id)
    assert after["notification"]["event_id"] == before["notification"]["event_id"]
    assert without_notification(after) == without_notification(before)
    assert all(len(downstream.calls_for(job_id, s)) == 1 for s in STAGES)


def without_notification(job: dict) -> dict:
    return {key: value for key, value in job.items() if key != "notification"}
