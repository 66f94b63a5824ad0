"""The enqueue outbox against a broker of the test's own (a throwaway redis-server), killed
and restarted: a start answered 202 while the broker is down is a promise kept within
seconds of the broker coming back, by a worker's relay, with no operator and no wait for
recovery (whose stale-after is set far beyond the test). ``/readyz`` names the broker
while it is down. With the broker up, the API sends at once and leaves nothing behind."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg2
import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, transitions
from tests.integration.test_notifications import gauge
from tests.support.processes import start_worker, wait_for
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.integration

#: Recovery would resume a stalled job only after 10 minutes: whatever moves the jobs
#: here within the test's deadlines is the outbox.
NO_RECOVERY = {"RECOVERY_STALE_AFTER": 600, "RECOVERY_INTERVAL": 600, "LOCK_TTL": 600,
               "OUTBOX_INTERVAL": 0.2, "OUTBOX_ENQUEUE_AFTER": 1}


def owed(database_url: str, job_id: object) -> bool:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cur:
        cur.execute("SELECT 1 FROM job_enqueues WHERE job_id = %s", (str(job_id),))
        found = cur.fetchone() is not None
    connection.close()
    return found


def readiness(api: Api) -> tuple[int, dict[str, Any]]:
    response = api.client.get("/readyz")
    return response.status_code, response.get_json()


def test_a_start_during_a_broker_outage_goes_on_when_it_comes_back(
        private_database, redis_url, downstream, log_dir, tmp_path):
    broker = ThrowawayRedis(tmp_path).start()
    env = make_env(private_database, redis_url, downstream, CELERY_BROKER_URL=broker.url,
                   **NO_RECOVERY)
    api = Api(create_app(Settings.from_env(env)).test_client())
    worker = start_worker("outbox-worker", env, log_dir)
    try:
        assert readiness(api)[0] == 200
        # When the broker dies
        broker.kill()
        # Then /readyz says so, naming it, while PostgreSQL and Redis are fine
        status, body = readiness(api)
        assert status == 503, body
        assert body["checks"]["broker"].startswith("error")
        assert body["checks"]["postgresql"] == "ok" and body["checks"]["redis"] == "ok"
        assert body["down"] == ["broker"]
        # And a start is still a 202, its chain owed in the outbox
        job_id = uuid.uuid4()
        assert api.start(job_id).status_code == 202
        assert api.job(job_id)["current_state"] == "PLANNING"
        assert owed(private_database, job_id)
        assert gauge(api, "orchestrator_enqueues_pending") == 1
        wait_for(lambda: worker.has_event("outbox.send_failed", job_id=str(job_id)), 30,
                 "the relay to try the broker")
        # When the broker comes back (empty: nothing of the outage survives in it)
        broker.start()
        # Then the job goes on within seconds, sent by the relay, not by recovery
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=45)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert worker.has_event("outbox.sent", job_id=str(job_id), by="relay")
        assert not worker.has_event("recovery.resume", job_id=str(job_id))
        assert not owed(private_database, job_id)
        assert gauge(api, "orchestrator_enqueues_pending") == 0
        wait_for(lambda: readiness(api)[0] == 200, 30, "the API to be ready again")
    finally:
        worker.stop()
        broker.kill()


def test_with_the_broker_up_the_api_sends_at_once_and_owes_nothing(
        private_database, redis_url, downstream, log_dir, tmp_path):
    broker = ThrowawayRedis(tmp_path).start()
    env = make_env(private_database, redis_url, downstream, CELERY_BROKER_URL=broker.url,
                   **{**NO_RECOVERY, "OUTBOX_ENQUEUE_AFTER": 30})
    api = Api(create_app(Settings.from_env(env)).test_client())
    worker = start_worker("outbox-fast-path", env, log_dir)
    try:
        job_id = uuid.uuid4()
        assert api.start(job_id).status_code == 202
        # The row committed with the start was cleared once the chain went
        assert not owed(private_database, job_id)
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=30)
        assert job["current_state"] == "COMPLETED"
        assert not worker.has_event("outbox.sent", job_id=str(job_id))
        # A second start of a running or ended job owes nothing either
        assert api.start(job_id).status_code == 409
        assert not owed(private_database, job_id)
    finally:
        worker.stop()
        broker.kill()
