"""Redis and PostgreSQL going away and coming back mid-run, on throwaway servers of the
test's own (never the machine's shared ones): workers and the API reconnect, /readyz says
not ready meanwhile, and jobs in flight end terminal with nothing lost or doubled."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from db.migrate import upgrade
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import (
    HAPPY_PATH,
    Api,
    stage_rows,
    start_with_a_hang,
    transitions,
)
from tests.support.processes import Service, start_worker, wait_for
from tests.support.services import ThrowawayPostgres, ThrowawayRedis, postgres_database

pytestmark = pytest.mark.integration

FAST = {"LOCK_TTL": 2, "RECOVERY_STALE_AFTER": 2, "RECOVERY_INTERVAL": 0.5}


def readiness(api: Api) -> tuple[int, dict]:
    response = api.client.get("/readyz")
    return response.status_code, response.get_json()


def postponements(worker: Service) -> list[dict]:
    return [e for e in worker.events() if e.get("event") == "stage.postponed"]


def postponements_counted(api: Api, stage: str) -> float:
    text = api.client.get("/metrics").get_data(as_text=True)
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "orchestrator_stage_postponements_total"
               and sample.labels == {"stage": stage})


def test_redis_restart_mid_run(private_database, downstream, log_dir, tmp_path):
    redis_server = ThrowawayRedis(tmp_path).start()
    env = make_env(private_database, redis_server.url, downstream, **FAST)
    api = Api(create_app(Settings.from_env(env)).test_client())
    worker = start_worker("redis-outage", env, log_dir)
    try:
        job_id = uuid.uuid4()
        release = start_with_a_hang(api, downstream, job_id, "PARSING")
        # When Redis dies mid-stage (losing the queue, the lock and every message)
        redis_server.kill()
        status, body = readiness(api)
        assert status == 503 and body["checks"]["redis"].startswith("error")
        assert body["checks"]["postgresql"] == "ok"
        # And PARSING's answer arrives while Redis is down: its result is written, its
        # lock cannot be released (left to expire), and its next message cannot be sent
        release.set()
        downstream.wait_ended(downstream.call(job_id, "PARSING", 1))
        wait_for(lambda: worker.has_event("lock.release_failed", job_id=str(job_id),
                                          stage="PARSING"), 60,
                 "the PARSING task to end during the outage")
        # And the log line about the lost next message names the job
        wait_for(lambda: worker.has_event("stage.internal_error", job_id=str(job_id),
                                          stage="PARSING", level="ERROR"), 60,
                 "the failed hand-over to ENRICHING, with its job")
        assert readiness(api)[0] == 503
        redis_server.start()
        # Then the API is ready again, and the job completes with an exact history
        wait_for(lambda: readiness(api)[0] == 200, 60, "the API to be ready again")
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert [s["status"] for s in job["stages"]].count("SUCCESS") == 4
        # (the chain's next message was lost with Redis: recovery went on with the job)
        assert worker.has_event("recovery.resume", job_id=str(job_id))
        # And new jobs go through as before
        fresh = uuid.uuid4()
        api.start(fresh)
        assert api.wait_state(fresh, "COMPLETED", "FAILED")["current_state"] == "COMPLETED"
    finally:
        worker.stop()
        redis_server.kill()


@pytest.fixture
def throwaway_postgres():
    # Not under pytest's tmp_path: pgserver runs PostgreSQL as another user and opens the
    # directories above its data to that user, and any pytest session starting on the
    # machine meanwhile closes /tmp/pytest-of-<user> again (0700), cutting the server off
    # from its own data ("could not open file .../global/pg_control: Permission denied").
    directory = Path(tempfile.mkdtemp(prefix="orch-test-pg-"))
    server = ThrowawayPostgres(directory / "pg")
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def on_throwaway_postgres(server: ThrowawayPostgres, redis_url: str, downstream, log_dir,
                          name: str, **overrides: Any) -> Iterator[tuple[Api, Service]]:
    """The API and a worker of a deployment whose database is on ``server``."""
    with postgres_database(server.url) as database_url:
        upgrade(database_url)
        env = make_env(database_url, redis_url, downstream, **overrides)
        worker = start_worker(name, env, log_dir)
        try:
            yield Api(create_app(Settings.from_env(env)).test_client()), worker
        finally:
            worker.stop()


def test_postgres_restart_mid_run(throwaway_postgres, redis_url, downstream, log_dir):
    with on_throwaway_postgres(throwaway_postgres, redis_url, downstream, log_dir,
                               "pg-outage", **FAST) as (api, worker):
        job_id = uuid.uuid4()
        release = start_with_a_hang(api, downstream, job_id, "PARSING")
        # When PostgreSQL crashes while PARSING is in flight, and its answer arrives
        throwaway_postgres.crash()
        status, body = readiness(api)
        assert status == 503 and body["checks"]["postgresql"].startswith("error")
        unavailable = api.get(f"/internal/jobs/{job_id}")
        assert unavailable.status_code == 503
        assert unavailable.get_json()["error"]["code"] == "dependency_unavailable"
        # And PARSING's answer arrives while PostgreSQL is down: its result cannot be
        # written, so the stage is postponed
        release.set()
        downstream.wait_ended(downstream.call(job_id, "PARSING", 1))
        wait_for(lambda: worker.has_event("stage.postponed", job_id=str(job_id),
                                          stage="PARSING"), 60,
                 "the PARSING task to be postponed during the outage")
        assert readiness(api)[0] == 503
        throwaway_postgres.restart()
        # Then everything reconnects and the job completes with an exact history
        wait_for(lambda: readiness(api)[0] == 200, 60, "the API to be ready again")
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert [s["status"] for s in job["stages"]].count("SUCCESS") == 4
        # (PARSING's result could not be written: the stage ran again, by its postponed
        # task or by recovery, whichever came first)
        assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"),
                                              (2, "SUCCESS", None)]


def test_a_stage_postponed_by_an_outage_goes_on_without_recovery(
        throwaway_postgres, redis_url, downstream, log_dir):
    # Recovery is made too slow to be what resumes the job: the postponed stage does
    slow_recovery = {"RECOVERY_INTERVAL": 3600, "RECOVERY_STALE_AFTER": 3600,
                     "METRICS_FLUSH_INTERVAL": 0.2}
    with on_throwaway_postgres(throwaway_postgres, redis_url, downstream, log_dir,
                               "pg-postponed", **slow_recovery) as (api, worker):
        job_id = uuid.uuid4()
        release = start_with_a_hang(api, downstream, job_id, "PARSING")
        # When PostgreSQL crashes while PARSING is in flight
        throwaway_postgres.crash()
        # Then a new start is refused as unavailable, not as an internal error
        refused = api.start(uuid.uuid4())
        assert refused.status_code == 503, refused.get_json()
        assert refused.get_json()["error"]["code"] == "dependency_unavailable"
        # And PARSING, whose answer cannot be written, is postponed again and again
        # while the outage lasts
        release.set()
        wait_for(lambda: len(postponements(worker)) >= 2, 60,
                 "PARSING to be postponed twice during the outage")
        throwaway_postgres.restart()
        # Then the job goes on by itself, with no recovery pass, and completes exactly
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert stage_rows(job, "PARSING") == [(1, "FAILED", "worker lost"),
                                              (2, "SUCCESS", None)]
        assert not worker.has_event("recovery.resume", job_id=str(job_id))
        assert job["retry_count"] == 0  # a postponement is not a retry of the service's
        postponed = postponements(worker)
        assert {(e["job_id"], e["stage"]) for e in postponed} == {(str(job_id), "PARSING")}
        assert all(e["level"] == "WARNING" and e["delay_s"] > 0 and e["error"]
                   for e in postponed)
        # And /metrics counts them as logged
        wait_for(lambda: postponements_counted(api, "PARSING") == len(postponed), 30,
                 "the postponements in /metrics")
