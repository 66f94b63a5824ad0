"""A storm: dozens of jobs with slow stages while workers are SIGKILLed mid-call. Every
job must end terminal with an exact history (checked in SQL), and the services must never
have seen two calls of one job at once (checked by the services themselves)."""

from __future__ import annotations

import itertools
import random
import uuid

import psycopg2
import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import HAPPY_PATH, Api
from tests.support.downstream_server import Call, Reply, ScriptedDownstream
from tests.support.processes import Service, start_worker, wait_for

pytestmark = pytest.mark.integration

JOBS, WORKERS, KILLS = 30, 3, 4
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")


def test_every_job_survives_a_storm_of_sigkills(private_database, redis_url, downstream,
                                                log_dir):
    database_url = private_database
    env = make_env(database_url, redis_url, downstream, LOCK_TTL=2, RECOVERY_STALE_AFTER=2,
                   RECOVERY_INTERVAL=0.5, MAX_LOST_ATTEMPTS=5)
    api = Api(create_app(Settings.from_env(env)).test_client())
    names = (f"storm-{n}" for n in itertools.count())
    # the pool the product ships (threads): 2 stages in flight per worker here
    workers = [start_worker(next(names), env, log_dir) for _ in range(WORKERS)]
    everyone = list(workers)
    rng = random.Random(20261130)
    ids = [uuid.uuid4() for _ in range(JOBS)]
    killed_calls: list[Call] = []

    def all_terminal() -> bool:
        return all(api.job(j)["current_state"] in ("COMPLETED", "FAILED") for j in ids)

    try:
        # Given thirty jobs whose every stage takes a while
        for job_id in ids:
            for stage in STAGES:
                downstream.script(job_id, stage, Reply(delay=0.5))
            assert api.start(job_id).status_code == 202
        # When, while they run, a worker with a call in flight is killed and replaced,
        # again and again (as long as there is work left to interrupt)
        for _ in range(KILLS):
            found = wait_for(lambda: _caller_of_an_open_call(downstream, ids, workers, rng)
                             or (all_terminal() and "done"), 120, "a call in flight")
            if found == "done":
                break
            victim, call = found
            workers.remove(victim)
            victim.kill()
            killed_calls.append(call)
            workers.append(start_worker(next(names), env, log_dir))
            everyone.append(workers[-1])

        # Then every job reaches a terminal state without an operator
        wait_for(all_terminal, 180, "every job to end", interval=0.5)
    finally:
        for worker in workers:
            worker.stop()
    check_invariants(database_url, ids)
    check_one_call_at_a_time(downstream, ids)
    # And the storm really interrupted calls: the killed worker hung up on each, and its
    # attempt was closed as lost and resumed
    print(f"\n{len(killed_calls)} kills, "
          f"{sum(c.disconnected_at is not None for c in killed_calls)} mid-call")
    interrupted = [downstream.wait_ended(c) for c in killed_calls]
    interrupted = [c for c in interrupted if c.disconnected_at is not None]
    assert interrupted
    for call in interrupted:
        check_lost_and_resumed(database_url, downstream, call)
    resumed = {e["job_id"] for w in everyone for e in w.events()
               if e.get("event") == "recovery.resume"}
    assert {c.job_id for c in interrupted} <= resumed


def _caller_of_an_open_call(downstream: ScriptedDownstream, ids: list[uuid.UUID],
                            workers: list[Service], rng: random.Random
                            ) -> tuple[Service, Call] | None:
    """A worker among ``workers`` whose call is in flight at the service right now."""
    open_calls = [c for j in ids for c in downstream.calls_for(j) if c.open]
    rng.shuffle(open_calls)
    for call in open_calls:
        for worker in workers:
            if worker.has_event("stage.started", job_id=call.job_id, stage=call.stage,
                                attempt=call.attempt) and call.open:
                return worker, call
    return None


def check_invariants(database_url: str, ids: list[uuid.UUID]) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        for job_id in ids:
            sql.execute("SELECT current_state, error_message FROM jobs WHERE job_id = %s",
                        (str(job_id),))
            state, error = sql.fetchone()
            sql.execute("SELECT from_state, to_state FROM job_transitions WHERE job_id = %s "
                        "ORDER BY id", (str(job_id),))
            moves = sql.fetchall()
            sql.execute("SELECT stage_name, status, completed_at FROM stage_executions "
                        "WHERE job_id = %s", (str(job_id),))
            attempts = sql.fetchall()
            # No attempt left open
            assert all(a[2] is not None for a in attempts), (job_id, attempts)
            if state == "COMPLETED":
                # Every state once, in order; one SUCCESS per stage
                assert moves == HAPPY_PATH, (job_id, moves)
                assert sorted(a[0] for a in attempts if a[1] == "SUCCESS") == sorted(STAGES)
            else:
                # Forward along the happy path, then one move to FAILED; only the poison
                # cap may fail a job here
                assert state == "FAILED", (job_id, state)
                *forward, last = moves
                assert forward == HAPPY_PATH[:len(forward)], (job_id, moves)
                assert last == (HAPPY_PATH[len(forward)][0], "FAILED"), (job_id, moves)
                assert "worker lost" in (error or ""), (job_id, error)


def check_one_call_at_a_time(downstream: ScriptedDownstream, ids: list[uuid.UUID]) -> None:
    """By the services' own clock of events: every call of a job had ended (answered, or
    dropped by its client) before the job's next call arrived."""
    for job_id in ids:
        calls = sorted(downstream.calls_for(job_id), key=lambda c: c.received)
        assert calls, job_id
        for earlier, later in itertools.pairwise(calls):
            assert earlier.before(later), (job_id, earlier, later)
        assert not any(c.open for c in calls), (job_id, calls)


def check_lost_and_resumed(database_url: str, downstream: ScriptedDownstream,
                           call: Call) -> None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT status, error_message FROM stage_executions WHERE job_id = %s "
                    "AND stage_name = %s AND attempt_number = %s",
                    (call.job_id, call.stage, call.attempt))
        assert sql.fetchall() == [("FAILED", "worker lost")], call
    # Called again later, by newer attempts only (the next one may itself have been lost
    # to a later kill before it could call)
    retried = [c.attempt for c in downstream.calls_for(call.job_id, call.stage)
               if c.received > call.received]
    assert retried and retried == sorted(set(retried)) and retried[0] > call.attempt, (
        call, retried)
