"""``orchestrator jobs prune --older-than D`` on real PostgreSQL, run as an operator runs
it: it deletes the terminal jobs that ended before the cutoff with their attempts,
transitions and events, in batches; it never touches a job that has not ended, nor one
whose notification is still owed or whose redrive still runs; it skips (never waits on) a
row another transaction holds; and the per-state counts stay exact."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.service import fail_job, start_job
from orchestrator.states import State, next_state
from tests.integration.test_job_counts import assert_exact

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "orchestrator")


def _enqueue_nothing(*_args, **_kwargs) -> None:
    return None


class Jobs:
    """Jobs written through the product's own use cases and repository, then aged."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url, pool_size=1)
        self.uow = PostgresUnitOfWork(self.engine)

    def started(self, **kw) -> uuid.UUID:
        job_id = uuid.uuid4()
        start_job(self.uow, _enqueue_nothing, job_id, {"n": 1}, "corr-prune", **kw)
        return job_id

    def completed(self) -> uuid.UUID:
        job_id = self.started()
        with self.uow() as jobs:
            state = State.PLANNING
            while not state.is_terminal:
                target = next_state(state)
                jobs.move(job_id, state, target, "test")
                state = target
        return job_id

    def failed(self, **kw) -> uuid.UUID:
        job_id = self.started(**kw)
        fail_job(self.uow, job_id, "done")
        return job_id

    def sql(self, statement: str, *args) -> list[tuple]:
        with psycopg2.connect(self.url) as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else []

    def age(self, job_id: uuid.UUID, hours: float) -> None:
        self.sql("UPDATE jobs SET created_at = created_at - make_interval(hours => %s), "
                 "completed_at = completed_at - make_interval(hours => %s) "
                 "WHERE job_id = %s", hours, hours, str(job_id))

    def notified(self, *job_ids: uuid.UUID) -> None:
        self.sql("UPDATE job_events SET status = 'delivered', delivered_at = now() "
                 "WHERE job_id = ANY(%s::uuid[])", [str(j) for j in job_ids])

    def exists(self, job_id: uuid.UUID) -> bool:
        return bool(self.sql("SELECT 1 FROM jobs WHERE job_id = %s", str(job_id)))

    def rows_of(self, job_id: uuid.UUID) -> dict[str, int]:
        return {table: self.sql(f"SELECT count(*) FROM {table} WHERE job_id = %s",
                                str(job_id))[0][0]
                for table in ("stage_executions", "job_transitions", "job_events")}


@pytest.fixture
def jobs(private_database):
    made = Jobs(private_database)
    yield made
    made.engine.dispose()


def prune(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "jobs", "prune", *args], env={**os.environ,
                          "DATABASE_URL": url}, capture_output=True, text=True, timeout=120)


def test_prune_deletes_what_ended_before_the_cutoff_and_nothing_else(jobs):
    old_done, old_failed = jobs.completed(), jobs.failed()
    recent = jobs.failed()
    running_since_long = jobs.started()  # non-terminal, however old
    owed = jobs.failed()  # its notification still pending
    redriven = jobs.failed()  # its redrive still running
    jobs.started(redriven_from=redriven)
    finished_redrive_of = jobs.failed()  # its redrive has ended
    finished_redrive = jobs.failed(redriven_from=finished_redrive_of)
    for job_id in (old_done, old_failed, running_since_long, owed, redriven,
                   finished_redrive_of):
        jobs.age(job_id, 48)
    jobs.notified(old_done, old_failed, recent, redriven, finished_redrive_of,
                  finished_redrive)
    assert jobs.rows_of(old_done)["job_transitions"] == 5
    assert jobs.rows_of(old_failed)["job_events"] == 1

    result = prune(jobs.url, "--older-than", "24h")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("pruned 3 job(s) that ended before ")
    assert "kept 2 that ended before then" in result.stdout
    for gone in (old_done, old_failed, finished_redrive_of):
        assert not jobs.exists(gone)
        assert jobs.rows_of(gone) == {"stage_executions": 0, "job_transitions": 0,
                                      "job_events": 0}
    for kept in (recent, running_since_long, owed, redriven, finished_redrive):
        assert jobs.exists(kept)
    # a finished redrive forgets where it came from; a running one was not touched
    assert jobs.sql("SELECT redriven_from FROM jobs WHERE job_id = %s",
                    str(finished_redrive)) == [(None,)]
    assert jobs.sql("SELECT current_state FROM jobs WHERE job_id = %s",
                    str(running_since_long)) == [("PLANNING",)]
    assert_exact(jobs.url)


def test_prune_goes_in_batches_and_zero_means_every_ended_job(jobs):
    ended = [jobs.failed() for _ in range(7)]
    jobs.notified(*ended)
    alive = jobs.started()

    result = prune(jobs.url, "--older-than", "0s", "--batch-size", "2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pruned 7 job(s)")
    assert not any(jobs.exists(j) for j in ended) and jobs.exists(alive)
    assert prune(jobs.url, "--older-than", "0s").stdout.startswith("pruned 0 job(s)")
    assert_exact(jobs.url)


def test_prune_skips_a_row_another_transaction_holds_instead_of_waiting(jobs):
    held, free = jobs.failed(), jobs.failed()
    jobs.notified(held, free)
    with psycopg2.connect(jobs.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (str(held),))
        # (a prune that waited on the lock would never return while it is held: the
        # subprocess's own timeout would fail this test)
        result = prune(jobs.url, "--older-than", "0s")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("pruned 1 job(s)")
        assert "kept 1" in result.stdout
        conn.rollback()
    assert jobs.exists(held) and not jobs.exists(free)


@pytest.mark.parametrize("value", ["30", "3x", "-1d", "d", "1.5.2h", "nan s"])
def test_a_bad_duration_is_an_argument_error(private_database, value):
    result = prune(private_database, "--older-than", value)
    assert result.returncode == 2
    assert "Invalid value for '--older-than'" in result.stderr
