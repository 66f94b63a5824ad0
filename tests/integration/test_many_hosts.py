"""Many hosts: workers of one deployment (separate processes, each its own ``--hostname``
and its own ``--stages``, each stage consumed by two or three of them) share one
database, Redis and broker. Every job completes exactly once and no stage of a job runs
twice at once, while four recovery passes (one per worker) look for stalled jobs and
resend those that waited long in a queue."""

from __future__ import annotations

import itertools
import uuid

import pytest
import redis

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api, transitions
from tests.integration.test_stage_queues import start_stage_worker
from tests.support.downstream_server import Reply
from tests.support.processes import Service, wait_for

pytestmark = pytest.mark.integration

STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")
JOBS = 20
#: Each host and the stages it consumes: every stage on two hosts but COSTING on three.
HOSTS = {"host-a": "planning", "host-b": "parsing,enriching", "host-c": "planning,costing",
         "host-d": "parsing,enriching,costing"}


def started(worker: Service) -> list[tuple[str, str]]:
    return [(e["job_id"], e["stage"]) for e in worker.events()
            if e.get("event") == "stage.started"]


def test_jobs_complete_exactly_once_across_hosts(private_database, redis_url, downstream,
                                                 log_dir):
    # Given four workers on "hosts" of their own, with different stages, sharing one
    # deployment
    env = make_env(private_database, redis_url, downstream)
    settings = Settings.from_env(env)
    api = Api(create_app(settings).test_client())
    workers: dict[str, Service] = {}
    try:
        for host, stages in HOSTS.items():
            workers[host] = start_stage_worker(host, env, log_dir, stages)
        # When 20 jobs start, each stage's service taking a little while
        jobs = [uuid.uuid4() for _ in range(JOBS)]
        for job_id in jobs:
            for stage in STAGES:
                downstream.script(job_id, stage, Reply(delay=0.2))
            assert api.start(job_id).status_code == 202

        # Then every job completes through the five transitions of the happy path
        wait_for(lambda: all(api.job(j)["current_state"] in ("COMPLETED", "FAILED")
                             for j in jobs), 300, "every job to finish", interval=0.5)
        for job_id in jobs:
            job = api.job(job_id)
            assert job["current_state"] == "COMPLETED", job
            assert transitions(job) == HAPPY_PATH
            assert [(s["stage_name"], s["status"]) for s in job["stages"]] == [
                (s, "SUCCESS") for s in STAGES]
            # And each stage's service was called exactly once, each call after the
            # previous stage's had ended: no stage ran twice, nor two at once
            calls = downstream.calls_for(job_id)
            assert [c.stage for c in calls] == list(STAGES), [c.stage for c in calls]
            assert all(a.before(b) for a, b in itertools.pairwise(calls))
            assert all(c.replied_at is not None for c in calls)

        # And each host ran only the stages it consumes, and every host took part
        for host, stages in HOSTS.items():
            ran = started(workers[host])
            mine = [(j, s) for j, s in ran if uuid.UUID(j) in set(jobs)]
            assert mine, f"{host} ran nothing"
            assert {s.lower() for _, s in mine} <= set(stages.split(",")), (host, mine)
    finally:
        for worker in workers.values():
            worker.stop()
        broker = redis.Redis.from_url(settings.broker_url or "")
        broker.delete(*(f"{settings.celery_queue}.{s.lower()}" for s in STAGES))
        broker.close()
