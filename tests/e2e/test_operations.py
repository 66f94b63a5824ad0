"""What an operator does by hand: migrate, run a recovery pass, stop the API gracefully."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests

from cli.embedded import free_port
from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.states import State
from tests.conftest import API_TOKEN, make_env
from tests.support.processes import start_api, wait_for
from tests.support.services import postgres_database

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "cli"]


def head_revision() -> str:
    """The newest migration in db/migrations, as Alembic sees it."""
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


def test_migrate_creates_the_schema_and_is_idempotent(database_url):
    with postgres_database(database_url) as fresh:
        env = {"DATABASE_URL": fresh, "PATH": "/usr/bin:/bin"}
        for _ in range(2):
            result = subprocess.run([*CLI, "migrate"], env=env, capture_output=True,
                                    text=True, timeout=60, cwd=Path(__file__).parents[2])
            assert result.returncode == 0, result.stderr
            assert "to head" in result.stdout
        with psycopg2.connect(fresh) as connection, connection.cursor() as sql:
            sql.execute("SELECT version_num FROM alembic_version")
            assert sql.fetchone()[0] == head_revision()


def test_recover_resumes_a_stalled_job_once(private_database, redis_url, downstream):
    # Given a job whose last sign of life is two hours old, with a stale-after of one hour
    # (so no clock between the two passes below can make it stale again)
    env = make_env(private_database, redis_url, downstream, RECOVERY_STALE_AFTER=3600)
    uow = PostgresUnitOfWork(make_engine(private_database, pool_size=1))
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, {}, None)
        jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        jobs.c.exec_driver_sql("UPDATE jobs SET last_progress_at = now() - interval '2 hours' "
                               "WHERE job_id = %(id)s", {"id": job_id})

    def recover() -> str:
        result = subprocess.run([*CLI, "recover"], env=env, capture_output=True, text=True,
                                timeout=60, cwd=Path(__file__).parents[2])
        assert result.returncode == 0, result.stderr
        return result.stdout

    # When two recovery passes run one after the other
    # Then the first resumes it, and its resume counts as progress: the second leaves it
    assert "resumed 1 job(s)" in recover()
    assert "resumed 0 job(s)" in recover()
    # (and the resume counts in the metrics the API serves, like a worker's)
    from api.app import create_app
    from orchestrator.settings import Settings

    scrape = create_app(Settings.from_env(env)).test_client().get("/metrics").get_data(True)
    assert "orchestrator_recovery_resumes_total 1.0" in scrape.splitlines()
    with uow() as jobs:
        resumes = jobs.c.exec_driver_sql("SELECT resume_count FROM jobs WHERE job_id = %(id)s",
                                         {"id": job_id}).scalar_one()
    assert resumes == 1


def test_sigterm_lets_the_api_finish_requests_in_flight(private_database, redis_url,
                                                        downstream, log_dir):
    database_url = private_database
    env = make_env(database_url, redis_url, downstream)
    port = free_port()
    api = start_api(env, log_dir, port)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {API_TOKEN}"}
    job_id = uuid.uuid4()
    requests.post(f"{base}/internal/jobs/{job_id}/start", headers=headers, timeout=10)
    # Given a fail request held inside the API by a row lock we own
    blocker = psycopg2.connect(database_url)
    cursor = blocker.cursor()
    cursor.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (str(job_id),))
    answers: list[int] = []
    request = threading.Thread(target=lambda: answers.append(requests.post(
        f"{base}/internal/jobs/{job_id}/fail", json={"error_message": "drain me"},
        headers=headers, timeout=30).status_code))
    request.start()
    wait_for(lambda: _waiting_on_lock(database_url), 30, "the request to wait on the lock")
    # When the API is told to stop while the request is in flight, and its shutdown is
    # under way: gunicorn handled the signal and its idle worker has already exited
    api.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _said(api, "Handling signal: term") and _said(api, "Worker exiting"),
             30, "the API to begin its shutdown")
    assert answers == [] and api.proc.poll() is None  # the request is still in flight
    blocker.rollback()
    # Then the request is answered, and only then does the API exit
    request.join(timeout=30)
    assert answers == [200]
    assert api.proc.wait(timeout=30) == 0
    blocker.close()
    api.stop()


def _said(service, text: str) -> bool:
    return any(text in str(e.get("message", "")) for e in service.events())


def _waiting_on_lock(database_url: str) -> bool:
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")
        return sql.fetchone()[0] > 0
