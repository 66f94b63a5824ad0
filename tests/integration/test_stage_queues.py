"""Per-stage queues: a worker consumes only the stages it is given (`--stages`); a job
whose next stage has no worker waits in that state and goes on when one comes; recovery
re-enqueues a job onto its stage's queue."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, transitions
from tests.support.processes import Service, start_worker, wait_for

pytestmark = pytest.mark.integration

STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")


def start_stage_worker(name: str, env: dict[str, str], log_dir: Path, stages: str,
                       concurrency: int = 2, timeout: float = 60) -> Service:
    """`orchestrator worker --stages …` with its own ``--hostname`` (as start_worker)."""
    argv = [sys.executable, "-m", "cli", "worker", "--stages", stages,
            "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle"]
    service = Service(name, argv, env, log_dir)
    try:
        service.wait_event("worker.ready", timeout=timeout)
    except BaseException:
        service.stop()
        raise
    return service


def ran(worker: Service, job_id: object) -> list[str]:
    """The stages ``worker`` started for the job, in order."""
    return [e["stage"] for e in worker.events()
            if e.get("event") == "stage.started" and e.get("job_id") == str(job_id)]


def resumes(worker: Service, job_id: object) -> int:
    return sum(1 for e in worker.events()
               if e.get("event") == "recovery.resume" and e.get("job_id") == str(job_id))


@pytest.fixture
def deployment(private_database, redis_url, downstream):
    """A deployment of the test's own (database, queues, lock prefix) and its broker; the
    stage queues are deleted afterwards."""
    env = make_env(private_database, redis_url, downstream)
    settings = Settings.from_env(env)
    broker = redis.Redis.from_url(settings.broker_url or "")
    yield env, settings, broker
    broker.delete(*(f"{settings.celery_queue}.{s.lower()}" for s in STAGES))
    broker.close()


def test_a_job_waits_for_a_worker_of_its_next_stage(deployment, downstream, log_dir):
    env, settings, broker = deployment
    api = Api(create_app(settings).test_client())
    parsing_queue = f"{settings.celery_queue}.parsing"
    # Given a worker that consumes PLANNING only
    planner = start_stage_worker("only-planning", env, log_dir, "Planning")
    rest = None
    try:
        # When a job starts
        job_id = uuid.uuid4()
        assert api.start(job_id).status_code == 202
        # Then it runs PLANNING and waits in PARSING, its PARSING message on the PARSING
        # queue, which nobody consumes
        api.wait_state(job_id, "PARSING", timeout=60)
        wait_for(lambda: broker.llen(parsing_queue), 30, "PARSING's message on its queue")
        assert api.job(job_id)["current_state"] == "PARSING"
        assert not downstream.calls_for(job_id, "PARSING")

        # When a worker of the other three stages comes
        rest = start_stage_worker("the-rest", env, log_dir, "parsing, ENRICHING,costing")

        # Then the job goes on and completes, each stage run by a worker that consumes it
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert ran(planner, job_id) == ["PLANNING"]
        assert set(ran(rest, job_id)) == {"PARSING", "ENRICHING", "COSTING"}
        assert [len(downstream.calls_for(job_id, s)) for s in STAGES] == [1, 1, 1, 1]
    finally:
        planner.stop()
        if rest is not None:
            rest.stop()


def test_recovery_sends_a_job_to_the_queue_of_its_stage(deployment, downstream, log_dir):
    env, settings, broker = deployment
    api = Api(create_app(settings).test_client())
    queues = {s: f"{settings.celery_queue}.{s.lower()}" for s in STAGES}
    # Given a job waiting in PARSING (only a PLANNING worker runs) whose PARSING message
    # is then lost
    planner = start_stage_worker("planning-recoverer", env, log_dir, "planning")
    rest = None
    try:
        job_id = uuid.uuid4()
        assert api.start(job_id).status_code == 202
        api.wait_state(job_id, "PARSING", timeout=60)
        wait_for(lambda: broker.llen(queues["PARSING"]), 30, "PARSING's message")
        broker.delete(queues["PARSING"])
        before = resumes(planner, job_id)

        # When the PLANNING worker's recovery pass finds the job stalled
        wait_for(lambda: resumes(planner, job_id) > before,
                 settings.recovery_stale_after + 60, "recovery to resume the job")

        # Then it sends the job to PARSING's queue, not to its own stage's nor the default
        wait_for(lambda: broker.llen(queues["PARSING"]), 30, "the resumed PARSING message")
        assert not broker.llen(settings.celery_queue)
        # And a PARSING worker finishes it
        rest = start_worker("recovered-rest", env, log_dir)  # all four stages
        job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
        assert job["current_state"] == "COMPLETED", job
        assert transitions(job) == HAPPY_PATH
        assert ran(planner, job_id) == ["PLANNING"]
        assert [len(downstream.calls_for(job_id, s)) for s in STAGES] == [1, 1, 1, 1]
    finally:
        planner.stop()
        if rest is not None:
            rest.stop()


def test_a_worker_takes_later_stages_before_new_jobs(deployment, downstream, log_dir):
    # Burst fairness: jobs already in flight finish before new ones start
    env, settings, broker = deployment
    api = Api(create_app(settings).test_client())
    costing_queue = f"{settings.celery_queue}.costing"
    # Given five jobs waiting in COSTING (run up to it by a worker without COSTING)
    early = [uuid.uuid4() for _ in range(5)]
    upstream = start_stage_worker("no-costing", env, log_dir, "planning,parsing,enriching")
    try:
        for job_id in early:
            assert api.start(job_id).status_code == 202
        for job_id in early:
            api.wait_state(job_id, "COSTING", timeout=60)
        wait_for(lambda: broker.llen(costing_queue) == len(early), 30,
                 "every COSTING message on its queue")
    finally:
        upstream.stop()
    # And five new jobs whose PLANNING messages wait too
    late = [uuid.uuid4() for _ in range(5)]
    for job_id in late:
        assert api.start(job_id).status_code == 202
    # When one worker of all stages, one stage at a time, takes them all
    worker = start_worker("one-at-a-time", env, log_dir, concurrency=1)
    try:
        for job_id in early + late:
            api.wait_state(job_id, "COMPLETED", timeout=60)
    finally:
        worker.stop()
    # Then every waiting COSTING ran before any new job's PLANNING
    last_costing = max(downstream.calls_for(j, "COSTING")[0].received for j in early)
    first_planning = min(downstream.calls_for(j, "PLANNING")[0].received for j in late)
    assert last_costing < first_planning


def test_a_worker_polls_each_stage_queue_once_in_pipeline_order_backwards(deployment,
                                                                          log_dir):
    # One list a stage queue (no priority lists: no message has a priority), watched in
    # the order that takes later stages first
    env, settings, broker = deployment
    prefix = settings.celery_queue
    watcher = redis.Redis.from_url(settings.broker_url or "", socket_timeout=5)
    worker = start_worker("polled", env, log_dir)  # all four stages
    try:
        with watcher.monitor() as monitor:
            deadline = time.monotonic() + 60
            while True:  # kombu polls again every second while the queues are empty
                command = monitor.next_command()["command"].split()
                if command[0].upper() == "BRPOP" and any(
                        key.startswith(prefix) for key in command[1:]):
                    break
                assert time.monotonic() < deadline, "no BRPOP on the stage queues"
    finally:
        worker.stop()
        watcher.close()
    assert command[1:-1] == [f"{prefix}.{stage}" for stage in
                             ("costing", "enriching", "parsing", "planning")]
