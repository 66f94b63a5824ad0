"""A storm: dozens of jobs with slow stages while workers are SIGKILLed at random. Every
job must end terminal with an exact history; the invariants are checked in SQL."""

from __future__ import annotations

import itertools
import random
import time
import uuid

import psycopg2

from api.app import create_app
from orchestrator.settings import Settings
from orchestrator.states import TRANSITIONS, State
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

JOBS, WORKERS, KILLS = 30, 3, 4
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")


def test_every_job_survives_a_storm_of_sigkills(private_database, redis_url, downstream,
                                                log_dir):
    database_url = private_database
    env = make_env(database_url, redis_url, downstream, LOCK_TTL=2, RECOVERY_STALE_AFTER=2,
                   RECOVERY_INTERVAL=0.5, MAX_LOST_ATTEMPTS=5)
    api = Api(create_app(Settings.from_env(env)).test_client())
    names = (f"storm-{n}" for n in itertools.count())
    workers = [start_worker(next(names), env, log_dir) for _ in range(WORKERS)]
    everyone = list(workers)
    rng = random.Random(20261130)
    ids = [uuid.uuid4() for _ in range(JOBS)]
    try:
        # Given thirty jobs whose every stage takes a while
        for job_id in ids:
            for stage in STAGES:
                downstream.script(job_id, stage, Reply(delay=0.3))
            assert api.start(job_id).status_code == 202
        # When, while they run, random workers are killed and replaced
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 1.5))  # let work pile up between kills
            victim = workers.pop(rng.randrange(len(workers)))
            victim.kill()
            workers.append(start_worker(next(names), env, log_dir))
            everyone.append(workers[-1])

        # Then every job reaches a terminal state without an operator
        def all_terminal() -> bool:
            return all(api.job(j)["current_state"] in ("COMPLETED", "FAILED") for j in ids)

        wait_for(all_terminal, 120, "every job to end", interval=0.5)
    finally:
        for worker in workers:
            worker.stop()
    check_invariants(database_url, ids)
    # And the storm really interrupted work: jobs were resumed after the kills
    resumed = {e["job_id"] for w in everyone for e in w.events()
               if e.get("event") == "recovery.resume"}
    assert resumed & {str(j) for j in ids}


def check_invariants(database_url: str, ids: list[uuid.UUID]) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        for job_id in ids:
            sql.execute("SELECT current_state, error_message FROM jobs WHERE job_id = %s",
                        (str(job_id),))
            state, error = sql.fetchone()
            sql.execute("SELECT from_state, to_state FROM job_transitions WHERE job_id = %s "
                        "ORDER BY id", (str(job_id),))
            moves = sql.fetchall()
            # States only move forward, each move allowed, none skipped or repeated
            assert moves[0][0] == "UPLOADED"
            for (_, b), (c, _) in zip(moves, moves[1:], strict=False):
                assert b == c
            assert all((State(a), State(b)) in TRANSITIONS for a, b in moves)
            sql.execute("SELECT stage_name, status, started_at, completed_at FROM "
                        "stage_executions WHERE job_id = %s ORDER BY started_at", (str(job_id),))
            attempts = sql.fetchall()
            # No two attempts of one job overlap in time, and none is left open
            for earlier, later in zip(attempts, attempts[1:], strict=False):
                assert earlier[3] is not None and earlier[3] <= later[2], (job_id, attempts)
            assert all(a[3] is not None for a in attempts)
            if state == "COMPLETED":
                assert moves == HAPPY_PATH
                assert sorted(a[0] for a in attempts if a[1] == "SUCCESS") == sorted(STAGES)
            else:  # only the poison cap may fail a job here
                assert "worker lost" in (error or ""), (job_id, error)
