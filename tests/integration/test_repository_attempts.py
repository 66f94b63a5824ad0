"""The stage hot path's two statements on real PostgreSQL: ``open_attempt`` (claim, count,
close the lost, open the next, read the input) and ``advance`` (move and close as
SUCCESS), each all or nothing."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.models import WORKER_LOST, AttemptCounts
from orchestrator.states import State

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uow(module_database):
    engine = make_engine(module_database, pool_size=1)
    yield PostgresUnitOfWork(engine)
    engine.dispose()


def planning_job(uow, input=None):
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, input or {"plan": "web"}, "corr")
        jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
    return job_id


def attempts(database_url, job_id):
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT stage_name, attempt_number, status, error_message, input_data,"
                    " output_data, fence, celery_task_id FROM stage_executions"
                    " WHERE job_id = %s ORDER BY id", (str(job_id),))
        return sql.fetchall()


def test_the_first_attempt_gets_the_jobs_input_and_a_new_fence(uow, module_database):
    job_id = planning_job(uow, {"plan": "web"})
    with uow() as jobs:
        opened = jobs.open_attempt(job_id, State.PLANNING, "task-1")
    assert opened is not None
    assert (opened.fence, opened.attempt, opened.before) == (1, 1, AttemptCounts(0, 0, 0))
    assert opened.input == {"plan": "web"}
    assert attempts(module_database, job_id) == [
        ("PLANNING", 1, "RUNNING", None, {"plan": "web"}, None, 1, "task-1")]


def test_a_running_attempt_is_counted_and_closed_as_lost(uow, module_database):
    job_id = planning_job(uow)
    with uow() as jobs:
        jobs.open_attempt(job_id, State.PLANNING, "dead-worker")
    # A second delivery after the first worker died
    with uow() as jobs:
        opened = jobs.open_attempt(job_id, State.PLANNING, "task-2")
    assert opened is not None
    assert (opened.fence, opened.attempt, opened.before) == (2, 2, AttemptCounts(1, 0, 1))
    rows = attempts(module_database, job_id)
    assert [(r[1], r[2], r[3], r[6]) for r in rows] == [
        (1, "FAILED", WORKER_LOST, 1), (2, "RUNNING", None, 2)]


def test_a_later_stage_gets_the_previous_stages_output(uow, module_database):
    job_id = planning_job(uow)
    with uow() as jobs:
        opened = jobs.open_attempt(job_id, State.PLANNING, "t1")
        assert jobs.advance(job_id, State.PLANNING, State.PARSING, "PLANNING succeeded",
                            fence=opened.fence, attempt=1, output={"plan_reference": "p/1"},
                            fields={"plan_reference": "p/1"}) is not None
    with uow() as jobs:
        opened = jobs.open_attempt(job_id, State.PARSING, "t2")
        job = jobs.get(job_id)
    assert opened is not None and opened.input == {"plan_reference": "p/1"}
    assert job.plan_reference == "p/1" and job.fence == 2


def test_a_job_not_in_the_stage_is_not_claimed_and_nothing_is_written(uow, module_database):
    job_id = planning_job(uow)
    with uow() as jobs:
        before = jobs.get(job_id)
        assert jobs.open_attempt(job_id, State.PARSING, "late") is None
        after = jobs.get(job_id)
    assert after.fence == before.fence and after.updated_at == before.updated_at
    assert attempts(module_database, job_id) == []
    with uow() as jobs:
        assert jobs.open_attempt(uuid.uuid4(), State.PLANNING, "ghost") is None


def test_advance_moves_and_closes_the_attempt_or_writes_nothing(uow, module_database):
    job_id = planning_job(uow)
    with uow() as jobs:
        opened = jobs.open_attempt(job_id, State.PLANNING, "t1")
    # A stale fence: nothing moves, the attempt stays open
    with uow() as jobs:
        assert jobs.advance(job_id, State.PLANNING, State.PARSING, "late", fence=0,
                            attempt=1, output={"x": 1}) is None
    assert attempts(module_database, job_id)[0][2] == "RUNNING"
    # The current fence: the job moves, the attempt is a SUCCESS with its output, and the
    # transition is recorded
    with uow() as jobs:
        moved = jobs.advance(job_id, State.PLANNING, State.PARSING, "PLANNING succeeded",
                             fence=opened.fence, attempt=1, output={"plan_reference": "p"},
                             fields={"plan_reference": "p"})
        detail = jobs.detail(job_id)
    assert moved is not None and moved.current_state is State.PARSING
    assert moved.job_id == job_id and moved.plan_reference == "p"
    row = attempts(module_database, job_id)[0]
    assert (row[2], row[5]) == ("SUCCESS", {"plan_reference": "p"})
    assert [(t.from_state, t.to_state) for t in detail.transitions][-1] == (
        State.PLANNING, State.PARSING)


def test_advance_to_completed_stamps_the_end(uow, module_database):
    job_id = planning_job(uow)
    states = [State.PLANNING, State.PARSING, State.ENRICHING, State.COSTING, State.COMPLETED]
    for state, target in zip(states, states[1:], strict=False):
        with uow() as jobs:
            opened = jobs.open_attempt(job_id, state, None)
            field = {"result_reference": "r"} if target is State.COMPLETED else {}
            moved = jobs.advance(job_id, state, target, "ok", fence=opened.fence,
                                 attempt=opened.attempt, output={"n": 1}, fields=field)
    assert moved.current_state is State.COMPLETED and moved.completed_at is not None
    assert moved.result_reference == "r"


def test_a_single_statement_unit_commits_by_itself_and_leaves_the_pool_transactional(
        uow, module_database):
    job_id = planning_job(uow)
    # A single-statement unit (autocommit) is committed when its block ends
    with uow(single=True) as jobs:
        assert jobs.open_attempt(job_id, State.PLANNING, "t1") is not None
    assert attempts(module_database, job_id)[0][2] == "RUNNING"
    # And the same pooled connection (the pool holds one) is transactional again: a unit
    # that fails after its first write rolls that write back
    with pytest.raises(RuntimeError), uow() as jobs:
        assert jobs.move(job_id, State.PLANNING, State.FAILED, "x", error_message="x")
        raise RuntimeError("after the first write")
    with uow() as jobs:
        assert jobs.get(job_id).current_state is State.PLANNING


def backend_pid(jobs) -> int:
    row = jobs._driver("SELECT pg_backend_pid() AS pid", {})
    return row["pid"]


def terminate(database_url, pid: int) -> None:
    """End the session and wait until its backend is gone (without the wait, the next
    checkout can come before the socket closes, and finds it open)."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as sql:
        sql.execute("SELECT pg_terminate_backend(%s, 60000)", (pid,))
        assert sql.fetchone()[0], f"backend {pid} still there after 60 s"


def test_a_single_statement_after_its_pooled_session_died_gets_a_new_one(
        uow, module_database):
    # Given the pool's one connection, used by a stage's statement, then its session
    # killed on the server (a PostgreSQL restart, an idle-session kill)
    job_id = planning_job(uow)
    with uow(single=True) as jobs:
        first = backend_pid(jobs)
    terminate(module_database, first)
    # When the next stage's statement runs, then the checkout's ping found the dead
    # session and it runs on a new one, with nothing lost
    with uow(single=True) as jobs:
        assert jobs.open_attempt(job_id, State.PLANNING, "t1") is not None
        assert backend_pid(jobs) != first
    assert attempts(module_database, job_id)[0][2] == "RUNNING"


def test_a_session_dying_under_a_statement_fails_it_and_is_not_reused(uow, module_database):
    # Given a single-statement block whose session dies before its statement runs
    job_id = planning_job(uow)
    with pytest.raises(psycopg2.OperationalError), uow(single=True) as jobs:
        terminate(module_database, backend_pid(jobs))
        # Then the statement fails as a lost connection (the stage raises; recovery
        # resumes the job), and nothing was written
        jobs.open_attempt(job_id, State.PLANNING, "t1")
    assert attempts(module_database, job_id) == []
    # And the next block runs on a new session
    with uow(single=True) as jobs:
        assert jobs.open_attempt(job_id, State.PLANNING, "t2") is not None


def test_both_statements_run_as_the_functions_whose_plans_a_session_keeps(uow):
    """Migration 0007: a stage's two statements are PL/pgSQL functions (planned once per
    session, not on every call); the repository must call them, not a statement of its
    own that PostgreSQL would plan anew each time."""
    job_id = planning_job(uow)
    with uow() as jobs:
        jobs._driver("SET LOCAL track_functions = 'pl'", {})
        opened = jobs.open_attempt(job_id, State.PLANNING, "t1")
        assert opened is not None
        assert jobs.advance(job_id, State.PLANNING, State.PARSING, "done", fence=opened.fence,
                            attempt=opened.attempt, output={"x": 1}) is not None
        calls = jobs._driver(
            "SELECT count(*) FILTER (WHERE funcname = 'orchestrator_open_attempt') AS opens,"
            " count(*) FILTER (WHERE funcname = 'orchestrator_advance') AS advances"
            " FROM pg_stat_xact_user_functions", {})
    assert calls == {"opens": 1, "advances": 1}
