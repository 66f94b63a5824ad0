"""A recovery pass whose enqueue fails part-way, on real PostgreSQL: the rest of the batch
is enqueued, and the jobs it could not enqueue are un-marked (``unmark_resumed``) so the
very next pass takes them, unless a worker claimed or moved them meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.service import recover
from orchestrator.states import State
from tests.support.fakes import FakeEnqueuer, FakeLocks

pytestmark = pytest.mark.integration

STALE_AFTER = 3600.0  # an hour: no clock between two passes of a test makes a job stale
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def uow(private_database: str) -> Iterator[PostgresUnitOfWork]:
    engine = make_engine(private_database, pool_size=1)
    yield PostgresUnitOfWork(engine)
    engine.dispose()


def stalled(uow: PostgresUnitOfWork, hours: int, state: State = State.PLANNING) -> uuid.UUID:
    """A started job whose last progress is ``hours`` old."""
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, {}, f"corr-{hours}")
        jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        if state is State.PARSING:
            fence = jobs.claim(job_id, State.PLANNING)
            jobs.move(job_id, State.PLANNING, State.PARSING, "PLANNING succeeded", fence=fence)
        jobs.c.exec_driver_sql(
            "UPDATE jobs SET last_progress_at = now() - make_interval(hours => %(h)s) "
            "WHERE job_id = %(id)s", {"h": hours, "id": job_id})
    return job_id


def marks(uow: PostgresUnitOfWork, job_id: uuid.UUID) -> dict[str, Any]:
    with uow() as jobs:
        row = jobs.c.exec_driver_sql(
            "SELECT last_progress_at, resume_count, fence, current_state FROM jobs "
            "WHERE job_id = %(id)s", {"id": job_id}).mappings().one()
    return dict(row)


def test_a_failed_enqueue_leaves_its_job_to_the_next_pass_and_the_rest_go(
        uow: PostgresUnitOfWork) -> None:
    # Given three stalled jobs, oldest first, and a broker that fails the second enqueue
    ids = [stalled(uow, hours) for hours in (3, 2, 1)]

    # When a recovery pass runs
    resumed = recover(uow, FakeLocks(), FakeEnqueuer(fail_on={2}), stale_after=STALE_AFTER)

    # Then the other two are enqueued and marked; the failed one is un-marked
    assert resumed == [ids[0], ids[2]]
    assert [marks(uow, i)["resume_count"] for i in ids] == [1, 0, 1]
    assert marks(uow, ids[1])["last_progress_at"] == EPOCH
    # And the next pass, at once, takes the failed one and only it
    again = FakeEnqueuer()
    assert recover(uow, FakeLocks(), again, stale_after=STALE_AFTER) == [ids[1]]
    assert [(c.job_id, c.from_state, c.correlation_id) for c in again.sent] == [
        (ids[1], State.PLANNING, "corr-2")]
    assert marks(uow, ids[1])["resume_count"] == 1


def test_unmark_resumed_refuses_a_job_claimed_or_moved_since(
        uow: PostgresUnitOfWork) -> None:
    claimed, moved, untouched = (stalled(uow, 2, State.PARSING) for _ in range(3))
    with uow() as jobs:
        before = {job.job_id: job for job in jobs.stale_jobs(STALE_AFTER, 10)}
        for job_id in before:
            jobs.mark_resumed(job_id)
    with uow() as jobs:  # meanwhile a worker claims one, an operator fails another
        assert jobs.claim(claimed, State.PARSING) is not None
        assert jobs.move(moved, State.PARSING, State.FAILED, "failed by operator",
                         error_message="stop") is not None
    after_meanwhile = {i: marks(uow, i) for i in (claimed, moved)}

    with uow() as jobs:
        results = {i: jobs.unmark_resumed(i, before[i].current_state, before[i].fence)
                   for i in (claimed, moved, untouched)}

    assert results == {claimed: False, moved: False, untouched: True}
    assert {i: marks(uow, i) for i in (claimed, moved)} == after_meanwhile
    assert marks(uow, untouched)["resume_count"] == 0
    assert marks(uow, untouched)["last_progress_at"] == EPOCH


def test_a_job_claimed_while_its_enqueue_failed_keeps_its_progress(
        uow: PostgresUnitOfWork) -> None:
    job_id = stalled(uow, 2)

    def a_worker_claims(job: uuid.UUID) -> None:
        with uow() as jobs:
            assert jobs.claim(job, State.PLANNING) is not None

    enqueue = FakeEnqueuer(fail_on={1}, during=a_worker_claims)
    assert recover(uow, FakeLocks(), enqueue, stale_after=STALE_AFTER) == []

    row = marks(uow, job_id)
    assert row["last_progress_at"] > EPOCH and row["fence"] == 1
    assert recover(uow, FakeLocks(), FakeEnqueuer(), stale_after=STALE_AFTER) == []
