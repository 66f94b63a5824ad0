"""The database itself refuses invalid states and transitions, whatever the writer: raw SQL,
no application code in the way."""

from __future__ import annotations

import itertools
import uuid

import psycopg2
import pytest

from orchestrator.states import PIPELINE, TRANSITIONS, State

# Jobs written here by raw SQL are left in every state: they live in a database of this
# module's own (module_database), where no worker's recovery pass can pick them up.
pytestmark = pytest.mark.integration


@pytest.fixture
def sql(module_database):
    connection = psycopg2.connect(module_database)
    connection.autocommit = True
    yield connection.cursor()
    connection.close()


def new_job(sql) -> str:
    job_id = str(uuid.uuid4())
    sql.execute("INSERT INTO jobs (job_id, current_state) VALUES (%s, 'UPLOADED')", (job_id,))
    return job_id


def walk_to(sql, job_id: str, target: State) -> None:
    """Move a job from UPLOADED to ``target`` through allowed steps only."""
    path = list(PIPELINE[: PIPELINE.index(target) + 1]) if target in PIPELINE else [
        State.UPLOADED, State.FAILED]
    for before, after in itertools.pairwise(path):
        sql.execute("UPDATE jobs SET current_state = %s, previous_state = %s WHERE job_id = %s",
                    (after.value, before.value, job_id))


@pytest.mark.parametrize(("from_state", "to_state"), list(itertools.product(State, State)))
def test_every_pair_of_states_is_allowed_exactly_when_the_machine_allows_it(
        sql, from_state, to_state):
    job_id = new_job(sql)
    walk_to(sql, job_id, from_state)
    update = ("UPDATE jobs SET current_state = %s, previous_state = %s WHERE job_id = %s",
              (to_state.value, from_state.value, job_id))
    if (from_state, to_state) in TRANSITIONS:
        sql.execute(*update)
    elif from_state == to_state:
        # Not a transition at all: the state stays, and nothing is recorded.
        sql.execute("UPDATE jobs SET retry_count = retry_count + 1 WHERE job_id = %s",
                    (job_id,))
        with pytest.raises(psycopg2.errors.CheckViolation):
            sql.execute(*update)  # previous_state may not change without a move
    else:
        with pytest.raises(psycopg2.errors.CheckViolation, match="invalid transition"):
            sql.execute(*update)


def test_a_state_outside_the_seven_is_refused(sql):
    job_id = new_job(sql)
    with pytest.raises(psycopg2.errors.CheckViolation):
        sql.execute("UPDATE jobs SET current_state = 'DONE', previous_state = 'UPLOADED' "
                    "WHERE job_id = %s", (job_id,))
    with pytest.raises(psycopg2.errors.CheckViolation):
        sql.execute("INSERT INTO stage_executions (job_id, stage_name, attempt_number, status) "
                    "VALUES (%s, 'PLANNING', 1, 'MAYBE')", (job_id,))


def test_a_job_is_born_uploaded(sql):
    with pytest.raises(psycopg2.errors.CheckViolation, match="created in UPLOADED"):
        sql.execute("INSERT INTO jobs (job_id, current_state) VALUES (%s, 'PLANNING')",
                    (str(uuid.uuid4()),))


def test_every_move_is_recorded_and_history_cannot_be_rewritten(sql):
    job_id = new_job(sql)
    walk_to(sql, job_id, State.COMPLETED)
    sql.execute("SELECT from_state, to_state FROM job_transitions WHERE job_id = %s ORDER BY id",
                (job_id,))
    assert sql.fetchall() == [(a.value, b.value) for a, b in itertools.pairwise(PIPELINE)]
    with pytest.raises(psycopg2.errors.CheckViolation, match="append-only"):
        sql.execute("UPDATE job_transitions SET to_state = 'FAILED' WHERE job_id = %s",
                    (job_id,))


def test_one_attempt_row_per_number_and_one_success_per_stage(sql):
    job_id = new_job(sql)
    insert = ("INSERT INTO stage_executions (job_id, stage_name, attempt_number, status) "
              "VALUES (%s, 'PARSING', %s, %s)")
    sql.execute(insert, (job_id, 1, "SUCCESS"))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        sql.execute(insert, (job_id, 1, "FAILED"))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        sql.execute(insert, (job_id, 2, "SUCCESS"))


def test_the_repository_refuses_an_invalid_move_before_the_database_sees_it(module_database):
    from db.engine import make_engine
    from db.uow import PostgresUnitOfWork
    from orchestrator.errors import InvalidTransition

    uow = PostgresUnitOfWork(make_engine(module_database, pool_size=1))
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, {}, None)
    with pytest.raises(InvalidTransition), uow() as jobs:
        jobs.move(job_id, State.UPLOADED, State.COMPLETED, "skipping ahead")
    with uow() as jobs:
        assert jobs.get(job_id).current_state is State.UPLOADED
