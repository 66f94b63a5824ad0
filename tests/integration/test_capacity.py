"""One default worker (Celery's threads pool) holds many stages in flight in one process,
and every guarantee holds for each of them: each lock is renewed past its TTL, no waiting
stage holds a database transaction, and a paused worker loses every one of its stages to
recovery and the fence, writing nothing when it wakes up."""

from __future__ import annotations

import signal
import threading
import uuid

import psycopg2
import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, attempt_run, transitions, wrote_nothing
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

pytestmark = pytest.mark.integration

IN_FLIGHT = 8
TTL = 2


@pytest.fixture
def deployment(private_database, redis_url, downstream):
    env = make_env(private_database, redis_url, downstream, LOCK_TTL=TTL,
                   RECOVERY_STALE_AFTER=TTL, RECOVERY_INTERVAL=0.5, PLANNING_TIMEOUT=120,
                   WORKER_CONCURRENCY=IN_FLIGHT)
    return env, Api(create_app(Settings.from_env(env)).test_client())


def start_held(api: Api, downstream, release: threading.Event) -> list[uuid.UUID]:
    """IN_FLIGHT jobs whose PLANNING attempt 1 is held until ``release``; returns once
    every one of those calls has reached the service (all in flight at once)."""
    ids = [uuid.uuid4() for _ in range(IN_FLIGHT)]
    for job_id in ids:
        downstream.script(job_id, "PLANNING", {1: Reply(release=release, hang_for=120)})
        assert api.start(job_id).status_code == 202
    calls = [downstream.wait_call(job_id, "PLANNING", 1, timeout=60) for job_id in ids]
    assert all(call.open for call in calls)
    return ids


def in_transaction(database_url: str) -> int:
    """Connections of this database inside a transaction right now, this one excepted."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")
        return sql.fetchone()[0]


def renewed_past(database_url: str, ids: list[uuid.UUID], seconds: float) -> bool:
    """Every job's last sign of life (its heartbeat's) is ``seconds`` after it started."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT count(*) FROM jobs WHERE job_id = ANY(%s::uuid[]) AND "
                    "last_progress_at > started_at + make_interval(secs => %s)",
                    ([str(i) for i in ids], seconds))
        return sql.fetchone()[0] == len(ids)


def test_one_worker_holds_many_waiting_stages_and_renews_every_lock(
        deployment, private_database, downstream, log_dir):
    env, api = deployment
    worker = start_worker("capacity-worker", env, log_dir, concurrency=IN_FLIGHT)
    release = threading.Event()
    try:
        try:
            # Given as many held PLANNING calls as the worker's concurrency, all in flight
            ids = start_held(api, downstream, release)
            # Then they run in one process
            pids = {e["pid"] for e in worker.events() if e.get("event") == "stage.started"}
            assert len(pids) == 1
            # And while they wait, they hold no database transaction between them (a
            # sample may catch a heartbeat's, never one per waiting stage)
            samples = [in_transaction(private_database) for _ in range(10)]
            assert max(samples) < IN_FLIGHT, samples
            # And every stage's lock is renewed for three TTLs, with no recovery taking over
            wait_for(lambda: renewed_past(private_database, ids, 3 * TTL), 60,
                     "every stage's heartbeat to run for three lock TTLs")
            assert not worker.has_event("recovery.resume")
        finally:
            release.set()
        # And when the service answers, every job completes with PLANNING called once
        for job_id in ids:
            job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
            assert transitions(job) == HAPPY_PATH
            assert len(downstream.calls_for(job_id, "PLANNING")) == 1
    finally:
        worker.stop()  # (a failed assertion leaves no worker running)


def test_a_paused_worker_loses_every_stage_in_flight_and_writes_nothing_late(
        deployment, downstream, log_dir):
    env, api = deployment
    paused = start_worker("paused-worker", env, log_dir, concurrency=IN_FLIGHT)
    rescuer = None
    release = threading.Event()
    try:
        try:
            # Given a worker with many stages in flight, paused as a whole (SIGSTOP)
            ids = start_held(api, downstream, release)
            paused.signal(signal.SIGSTOP)
            # When another worker comes: once the paused worker's locks expire, recovery
            # resumes every job, and each completes on a second PLANNING attempt
            rescuer = start_worker("rescuer-worker", env, log_dir, concurrency=IN_FLIGHT)
            jobs = [api.wait_state(job_id, "COMPLETED", "FAILED", timeout=90) for job_id in ids]
            # And the paused worker wakes up to the answers of its old calls
            release.set()
            paused.signal(signal.SIGCONT)
            runs = [wait_for(lambda j=job_id: attempt_run(paused, j, "PLANNING", 1), 60,
                             "the woken stage's run to end") for job_id in ids]
        finally:
            release.set()
            paused.signal(signal.SIGCONT)
        # Then the woken stages wrote nothing, and every job went through each state once
        assert all(wrote_nothing(run) for run in runs), runs
        for job in jobs:
            assert job["current_state"] == "COMPLETED", job
            assert transitions(job) == HAPPY_PATH
            planning = [(s["attempt_number"], s["status"]) for s in job["stages"]
                        if s["stage_name"] == "PLANNING"]
            assert planning == [(1, "FAILED"), (2, "SUCCESS")]
    finally:  # (a failed assertion leaves no worker running)
        paused.stop()
        if rescuer is not None:
            rescuer.stop()


def test_a_worker_says_at_start_up_whether_postgresql_has_room_for_its_pool(deployment,
                                                                            log_dir):
    env, _ = deployment
    with psycopg2.connect(env["DATABASE_URL"]) as connection, connection.cursor() as sql:
        sql.execute("SELECT current_setting('max_connections')::int")
        max_connections = sql.fetchone()[0]
    tag = uuid.uuid4().hex[:6]
    # Given one worker that fits and one whose pool could outgrow the server
    small = start_worker(f"budget-{tag}-small", env, log_dir, concurrency=2)
    large = start_worker(f"budget-{tag}-large", env, log_dir,
                         concurrency=max_connections + 10)
    try:
        budget = {}
        for worker in (small, large):
            budget[worker] = wait_for(lambda w=worker: next(
                (e for e in w.events() if e.get("event") == "worker.database_budget"), None),
                60, "the worker's connection budget line")
    finally:
        small.stop()
        large.stop()
    # Then the first says so at INFO with its figures: threads, concurrency + 2, and the
    # outbox relay's 2
    assert budget[small]["level"] == "INFO" and budget[small]["may_open"] == 6
    assert budget[small]["pool"] == "threads"
    # And the second warns, naming the setting to change
    warning = budget[large]
    assert warning["level"] == "WARNING", warning
    assert warning["may_open"] == max_connections + 14
    assert "lower WORKER_CONCURRENCY or raise PostgreSQL's max_connections" in warning["error"]
