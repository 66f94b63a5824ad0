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
            assert sql.fetchone()[0] == "0002"


def test_recover_resumes_a_stalled_job_once(private_database, redis_url, downstream):
    env = make_env(private_database, redis_url, downstream, RECOVERY_STALE_AFTER=1)
    uow = PostgresUnitOfWork(make_engine(private_database, pool_size=1))
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, {}, None)
        jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        jobs.c.exec_driver_sql("UPDATE jobs SET last_progress_at = now() - interval '1 hour' "
                               "WHERE job_id = %(id)s", {"id": job_id})

    def recover() -> str:
        return subprocess.run([*CLI, "recover"], env=env, capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).parents[2]).stdout

    assert "resumed 1 job(s)" in recover()
    assert "resumed 0 job(s)" in recover()  # the first pass marked it: not stale any more


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
    wait_for(lambda: _waiting_on_lock(database_url), 10, "the request to wait on the lock")
    # When the API is told to stop while the request is in flight
    api.proc.send_signal(signal.SIGTERM)
    threading.Timer(1.0, blocker.rollback).start()
    # Then the request is answered, and only then does the API exit
    request.join(timeout=30)
    assert answers == [200]
    assert api.proc.wait(timeout=30) == 0
    blocker.close()
    api.stop()


def _waiting_on_lock(database_url: str) -> bool:
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")
        return sql.fetchone()[0] > 0
