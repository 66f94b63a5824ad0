"""A job's start on real PostgreSQL (migration 0008): create if new, refuse another input,
move UPLOADED → PLANNING by compare-and-set and owe the job its chain, in one statement,
all or nothing; concurrent starts from real processes move the job once."""

from __future__ import annotations

import multiprocessing
import uuid

import psycopg2
import pytest

from db.engine import make_engine
from db.migrate import downgrade, upgrade
from db.uow import PostgresUnitOfWork
from orchestrator.states import State

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uow(module_database):
    engine = make_engine(module_database, pool_size=1)
    yield PostgresUnitOfWork(engine)
    engine.dispose()


def start(uow, job_id, input=None, *, check_input=True, delay=2.0, redriven_from=None):
    with uow(single=True) as jobs:
        return jobs.start(job_id, {} if input is None else input, "corr",
                          check_input=check_input, reason="started", outbox_delay=delay,
                          redriven_from=redriven_from)


def rows(database_url, job_id):
    """(the job's state, fence and updated_at; its transitions; its outbox rows)."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT current_state, fence, updated_at, started_at FROM jobs"
                    " WHERE job_id = %s", (str(job_id),))
        job = sql.fetchone()
        sql.execute("SELECT from_state, to_state, reason FROM job_transitions"
                    " WHERE job_id = %s ORDER BY id", (str(job_id),))
        transitions = sql.fetchall()
        sql.execute("SELECT from_state, correlation_id, fence,"
                    " round(extract(epoch FROM next_attempt_at - created_at))"
                    " FROM job_enqueues WHERE job_id = %s", (str(job_id),))
        enqueues = sql.fetchall()
    return job, transitions, enqueues


def test_a_new_job_is_created_moved_and_owed_its_chain_in_one_call(uow, module_database):
    job_id = uuid.uuid4()
    with uow() as jobs:  # (a transaction of its own only to count the calls in it)
        jobs._driver("SET LOCAL track_functions = 'pl'", {})
        started = jobs.start(job_id, {"plan": "web"}, "corr-1", check_input=True,
                             reason="started", outbox_delay=7)
        calls = jobs._driver("SELECT calls FROM pg_stat_xact_user_functions"
                             " WHERE funcname = 'orchestrator_start_job'", {})
    assert (started.created, started.moved, started.mismatch) == (True, True, False)
    assert started.job is not None
    assert started.job.job_id == job_id and started.job.current_state is State.PLANNING
    assert started.job.input == {"plan": "web"} and started.job.correlation_id == "corr-1"
    assert started.job.started_at is not None
    assert calls == {"calls": 1}
    job, transitions, enqueues = rows(module_database, job_id)
    assert job[:2] == ("PLANNING", 0)
    assert transitions == [("UPLOADED", "PLANNING", "started")]
    assert enqueues == [("PLANNING", "corr-1", 0, 7)]


def test_a_repeated_start_moves_nothing_and_returns_the_job_as_it_is(uow, module_database):
    job_id = uuid.uuid4()
    first = start(uow, job_id, {"plan": "web"})
    before = rows(module_database, job_id)
    again = start(uow, job_id, {"plan": "web"})
    assert (again.created, again.moved, again.mismatch) == (False, False, False)
    assert again.job == first.job
    assert rows(module_database, job_id) == before  # no second transition, no second row


@pytest.mark.parametrize("stored, given, check, mismatch", [
    ({"plan": "web"}, {"plan": "db"}, True, True),
    ({"plan": "web"}, {"plan": "db"}, False, False),  # a start with no input: never checked
    ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, True, False),  # key order is not input
    ({"a": 1}, {"a": 1, "b": None}, True, True),
])
def test_another_input_on_a_job_not_yet_moved_is_refused_and_writes_nothing(
        uow, module_database, stored, given, check, mismatch):
    job_id = uuid.uuid4()
    with uow() as jobs:  # created, not yet moved (a start that died between the two)
        jobs.insert_if_absent(job_id, stored, "corr")
    before = rows(module_database, job_id)
    started = start(uow, job_id, given, check_input=check)
    assert started.mismatch is mismatch and started.created is False
    if mismatch:
        assert started.moved is False
        assert started.job is not None and started.job.input == stored
        assert rows(module_database, job_id) == before
    else:
        assert started.moved is True
        assert rows(module_database, job_id)[0][0] == "PLANNING"


def test_a_refused_start_of_a_running_job_changes_nothing(uow, module_database):
    job_id = uuid.uuid4()
    start(uow, job_id, {"plan": "web"})
    before = rows(module_database, job_id)
    refused = start(uow, job_id, {"plan": "other"})
    assert (refused.created, refused.moved, refused.mismatch) == (False, False, True)
    assert rows(module_database, job_id) == before


def test_a_redrive_records_the_job_it_redrives(uow):
    old, new = uuid.uuid4(), uuid.uuid4()
    start(uow, old)
    started = start(uow, new, redriven_from=old)
    assert started.job is not None and started.job.redriven_from == old


def _race(database_url: str, job_id: str, barrier, results) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        barrier.wait(timeout=60)
        with PostgresUnitOfWork(engine)(single=True) as jobs:
            started = jobs.start(uuid.UUID(job_id), {"plan": "web"}, "corr",
                                 check_input=True, reason="started", outbox_delay=2)
        results.put((started.created, started.moved))
    finally:
        engine.dispose()


def test_concurrent_starts_from_real_processes_create_and_move_the_job_once(
        module_database):
    job_id, racers = uuid.uuid4(), 6
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_race,
                                 args=(module_database, str(job_id), barrier, results))
                 for _ in range(racers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert sorted(outcomes) == [(False, False)] * (racers - 1) + [(True, True)]
    job, transitions, enqueues = rows(module_database, job_id)
    assert job[:2] == ("PLANNING", 0)
    assert transitions == [("UPLOADED", "PLANNING", "started")]
    assert len(enqueues) == 1


def test_the_migration_adds_the_function_and_its_downgrade_removes_it(private_database):
    def exists() -> bool:
        with psycopg2.connect(private_database) as connection, connection.cursor() as sql:
            sql.execute("SELECT count(*) FROM pg_proc WHERE proname = 'orchestrator_start_job'")
            return sql.fetchone()[0] == 1

    assert exists()
    downgrade(private_database, "0007")
    assert not exists()
    upgrade(private_database)
    assert exists()
