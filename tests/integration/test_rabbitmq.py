"""RabbitMQ as the broker (``CELERY_BROKER_URL=amqp://…``): the happy path, and a worker
SIGKILLed mid-stage whose job another worker and recovery finish exactly once.

On AMQP a killed consumer's unacked messages go back to the queue at once (no visibility
timeout as on Redis): the survivor gets the killed stage's message while the dead
worker's lock still stands, and the lock, the state check and the fence keep it from
running the stage twice. Each test has queues of its own (``make_env``'s CELERY_QUEUE),
deleted afterwards. The machine's RabbitMQ is used; if it is not running, it is started
(never stopped nor reconfigured)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, start_with_a_hang, transitions
from tests.support.processes import start_worker, wait_for
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")


def _answers(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def amqp_url() -> str:
    """The machine's RabbitMQ, started (detached) if it does not answer. There is no
    embedded RabbitMQ: a machine with none installed skips these tests, saying why."""
    if not _answers(AMQP_URL):
        if shutil.which("rabbitmq-server") is None:
            pytest.skip(f"no RabbitMQ at {AMQP_URL} and no rabbitmq-server to start")
        subprocess.run(["rabbitmq-server", "-detached"], check=False, timeout=60)
        wait_for(lambda: _answers(AMQP_URL), 120, f"RabbitMQ at {AMQP_URL}", interval=1)
    return AMQP_URL


def delete_queues(url: str, base: str) -> None:
    """Delete a deployment's stage queues (and their exchanges, and the default queue)."""
    names = [base, *(f"{base}.{s.lower()}" for s in STAGES)]
    with Connection(url) as conn:
        for name in names:
            for delete in ("queue_delete", "exchange_delete"):
                channel = conn.channel()  # a failed delete closes its channel
                with contextlib.suppress(Exception):
                    getattr(channel, delete)(name)
                with contextlib.suppress(Exception):
                    channel.close()


def queue_exists(url: str, name: str) -> bool:
    with Connection(url) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
        except Exception:
            return False
        return True


@pytest.fixture
def rabbit(amqp_url, private_database, redis_url, downstream) -> Iterator[dict[str, str]]:
    """A deployment of the test's own on RabbitMQ; its queues are deleted afterwards."""
    env = make_env(private_database, redis_url, downstream, CELERY_BROKER_URL=amqp_url)
    yield env
    delete_queues(amqp_url, env["CELERY_QUEUE"])
    assert not queue_exists(amqp_url, f"{env['CELERY_QUEUE']}.planning")


def test_a_job_runs_every_stage_over_rabbitmq(rabbit, downstream, log_dir):
    # Given a worker and the API on RabbitMQ
    settings = Settings.from_env(rabbit)
    assert settings.broker_url and settings.broker_url.startswith("amqp://")
    api = Api(create_app(settings).test_client())
    worker = start_worker("rabbit-happy", rabbit, log_dir)
    try:
        # When a job starts
        job_id = uuid.uuid4()
        assert api.start(job_id).status_code == 202
        # Then it completes through the five transitions, each stage called once
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert [c.stage for c in downstream.calls_for(job_id)] == list(STAGES)
        # And it went through the broker, not through recovery resending it
        assert not worker.has_event("recovery.resume", job_id=str(job_id))
        # And the stage queues are RabbitMQ's (the broker the worker consumed from)
        assert queue_exists(rabbit["CELERY_BROKER_URL"], f"{settings.celery_queue}.costing")
    finally:
        worker.stop()


def test_sigkill_mid_stage_over_rabbitmq_then_the_job_finishes_once(rabbit, downstream,
                                                                    log_dir):
    # Given two workers on RabbitMQ and a PARSING service that hangs on attempt 1, which
    # it has received
    settings = Settings.from_env(rabbit)
    api = Api(create_app(settings).test_client())
    first = start_worker("rabbit-kill-a", rabbit, log_dir)
    second = start_worker("rabbit-kill-b", rabbit, log_dir)
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

        # When the worker running PARSING is killed with SIGKILL (its whole process
        # group), mid-call: RabbitMQ gives its unacked message to the survivor at once
        try:
            running.kill()
            downstream.wait_ended(lost)
        finally:
            hang.set()

        # Then the survivor (its redelivered message or its recovery pass) completes the
        # job once the dead worker's lock has expired, each stage succeeding once
        job = api.wait_state(job_id, "COMPLETED", "FAILED",
                             timeout=settings.lock_ttl + settings.recovery_stale_after + 60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert [s["status"] for s in job["stages"]].count("SUCCESS") == 4
        parsing = [(s["attempt_number"], s["status"]) for s in job["stages"]
                   if s["stage_name"] == "PARSING"]
        assert parsing == [(1, "FAILED"), (2, "SUCCESS")]
        assert job["retry_count"] == 0
        # And the service saw the dead worker's call end before the survivor's arrived,
        # and every other stage once
        assert lost.disconnected_at is not None and lost.replied_at is None
        assert [c.attempt for c in downstream.calls_for(job_id, "PARSING")] == [1, 2]
        assert lost.before(downstream.call(job_id, "PARSING", 2))
        assert [len(downstream.calls_for(job_id, s)) for s in STAGES] == [1, 2, 1, 1]
        assert survivor.has_event("stage.started", job_id=str(job_id), stage="COSTING")
        # And the killed stage's message, back on the queue at once, found the dead
        # worker's lock still standing and ran nothing (recovery resumed the job later)
        assert survivor.has_event("lock.busy", job_id=str(job_id), stage="PARSING")
        assert survivor.has_event("recovery.resume", job_id=str(job_id), stage="PARSING")
    finally:
        first.stop()
        second.stop()


def test_the_locks_redis_gone_mid_stage_the_job_goes_on_by_itself_over_rabbitmq(
        amqp_url, private_database, downstream, log_dir, tmp_path):
    # Given a deployment on RabbitMQ whose locks live in a Redis of the test's own, with
    # recovery too slow to be what resumes a job
    locks = ThrowawayRedis(tmp_path).start()
    env = make_env(private_database, locks.url, downstream, CELERY_BROKER_URL=amqp_url,
                   RECOVERY_INTERVAL=3600, RECOVERY_STALE_AFTER=3600)
    api = Api(create_app(Settings.from_env(env)).test_client())
    worker = start_worker("rabbit-locks-gone", env, log_dir)
    try:
        job_id = uuid.uuid4()
        release = start_with_a_hang(api, downstream, job_id, "PARSING")
        # When that Redis dies while PARSING is in flight (every lock lost with it), and
        # PARSING's answer arrives meanwhile
        locks.kill()
        release.set()
        # Then PARSING's result stands, its lock left to expire, and ENRICHING, which
        # cannot take its lock, is postponed while Redis is away
        wait_for(lambda: worker.has_event("lock.release_failed", job_id=str(job_id),
                                          stage="PARSING"), 60, "PARSING's failed release")
        wait_for(lambda: worker.has_event("stage.postponed", job_id=str(job_id),
                                          stage="ENRICHING"), 60, "ENRICHING postponed")
        assert api.job(job_id)["current_state"] == "ENRICHING"
        locks.start()
        # Then, Redis back, the job completes by itself, each stage called once
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert [len(downstream.calls_for(job_id, s)) for s in STAGES] == [1, 1, 1, 1]
        assert not worker.has_event("recovery.resume", job_id=str(job_id))
    finally:
        worker.stop()
        locks.kill()
        delete_queues(amqp_url, env["CELERY_QUEUE"])
