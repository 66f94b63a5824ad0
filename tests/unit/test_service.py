"""The use cases start_job, fail_job and recover on in-memory fakes of their ports."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest

from orchestrator.errors import InputMismatch, JobNotFound, JobTerminal
from orchestrator.models import CANCELLED, AttemptStatus
from orchestrator.service import fail_job, recover, start_job
from orchestrator.states import State
from tests.support.fakes import (
    EPOCH,
    CapturedLogs,
    Enqueued,
    FakeCanceller,
    FakeEnqueuer,
    FakeLocks,
    FakeUnitOfWork,
)

STALE_AFTER = 300.0


@pytest.fixture
def uow() -> FakeUnitOfWork:
    return FakeUnitOfWork()


@pytest.fixture
def logs() -> Iterator[CapturedLogs]:
    with CapturedLogs() as captured:
        yield captured


# --- start_job --------------------------------------------------------------------------


def test_start_creates_moves_and_enqueues_a_new_job_once(uow: FakeUnitOfWork) -> None:
    enqueue, job_id = FakeEnqueuer(), uuid4()

    result = start_job(uow, enqueue, job_id, {"sample": "web-stack"}, "corr-1")

    assert result.started is True
    assert result.job.current_state is State.PLANNING and result.job.started_at is not None
    assert uow.job(job_id).input == {"sample": "web-stack"}
    assert uow.job(job_id).correlation_id == "corr-1"
    assert uow.transitions(job_id) == [(State.UPLOADED, State.PLANNING)]
    assert enqueue.calls == [Enqueued(job_id, State.PLANNING, "corr-1")]


@pytest.mark.parametrize("state", [State.PLANNING, State.ENRICHING])
def test_starting_a_running_job_again_changes_nothing(uow: FakeUnitOfWork, state: State
                                                      ) -> None:
    enqueue = FakeEnqueuer()
    job_id = uow.add_job(state)
    before = uow.snapshot()

    result = start_job(uow, enqueue, job_id, {}, "corr-2")

    assert result.started is False and result.job.current_state is state
    assert enqueue.calls == []
    assert uow.snapshot() == before


def test_a_second_start_does_not_enqueue_a_second_chain(uow: FakeUnitOfWork) -> None:
    enqueue, job_id = FakeEnqueuer(), uuid4()

    first = start_job(uow, enqueue, job_id, {}, None)
    second = start_job(uow, enqueue, job_id, {}, None)

    assert (first.started, second.started) == (True, False)
    assert len(enqueue.calls) == 1


@pytest.mark.parametrize("state", [State.UPLOADED, State.PLANNING, State.FAILED])
def test_a_start_with_another_input_is_refused_and_changes_nothing(
        uow: FakeUnitOfWork, state: State) -> None:
    enqueue = FakeEnqueuer()
    job_id = uow.add_job(state)
    before = uow.snapshot()

    with pytest.raises(InputMismatch):
        start_job(uow, enqueue, job_id, {"sample": "teardown"}, None)

    assert enqueue.calls == [] and uow.snapshot() == before
    if not state.is_terminal:  # a start with no input never conflicts
        assert start_job(uow, enqueue, job_id, None, None).job.job_id == job_id


@pytest.mark.parametrize("state", [State.COMPLETED, State.FAILED])
def test_starting_a_terminal_job_is_refused(uow: FakeUnitOfWork, state: State) -> None:
    enqueue = FakeEnqueuer()
    job_id = uow.add_job(state)
    before = uow.snapshot()

    with pytest.raises(JobTerminal) as error:
        start_job(uow, enqueue, job_id, {}, None)

    assert error.value.state == state.value
    assert enqueue.calls == [] and uow.snapshot() == before


def test_an_enqueue_failure_leaves_the_start_committed_for_recovery(
        uow: FakeUnitOfWork, logs: CapturedLogs) -> None:
    enqueue, job_id = FakeEnqueuer(fail_on={1}), uuid4()

    result = start_job(uow, enqueue, job_id, {}, "corr-1")

    assert result.started is True
    assert uow.job(job_id).current_state is State.PLANNING
    assert enqueue.sent == []
    (event,) = logs.events("job.enqueue_failed")
    assert event["job_id"] == str(job_id) and "broker unreachable" in event["error"]


# --- fail_job ---------------------------------------------------------------------------


def test_fail_moves_the_job_closes_its_attempt_and_cancels_its_task(
        uow: FakeUnitOfWork) -> None:
    cancel = FakeCanceller()
    job_id = uow.add_job(State.PARSING)
    uow.open_attempt(job_id, State.PARSING, task_id="task-7")

    job = fail_job(uow, job_id, "operator says stop", cancel=cancel)

    assert job.current_state is State.FAILED and job.error_message == "operator says stop"
    assert job.completed_at is not None
    assert uow.job(job_id) == job
    assert uow.transitions(job_id)[-1] == (State.PARSING, State.FAILED)
    assert uow.snapshot().transitions[-1].reason == "failed by operator"
    (attempt,) = uow.attempts(job_id, State.PARSING)
    assert (attempt.status, attempt.error_message) == (AttemptStatus.FAILED, CANCELLED)
    assert cancel.calls == [["task-7"]]
    # what was done before stays done
    assert uow.attempts(job_id, State.PLANNING)[0].status is AttemptStatus.SUCCESS


def test_fail_without_a_running_task_cancels_nothing(uow: FakeUnitOfWork) -> None:
    cancel = FakeCanceller()
    job_id = uow.add_job(State.PLANNING)
    uow.open_attempt(job_id, State.PLANNING, task_id=None)  # no task id recorded

    fail_job(uow, job_id, "stop", cancel=cancel, reason="redriven elsewhere")

    assert cancel.calls == []
    assert uow.attempts(job_id)[0].error_message == CANCELLED
    assert uow.snapshot().transitions[-1].reason == "redriven elsewhere"


@pytest.mark.parametrize("state", [State.COMPLETED, State.FAILED])
def test_failing_a_terminal_job_is_refused(uow: FakeUnitOfWork, state: State) -> None:
    job_id = uow.add_job(state)
    before = uow.snapshot()

    with pytest.raises(JobTerminal):
        fail_job(uow, job_id, "too late", cancel=FakeCanceller())
    assert uow.snapshot() == before


def test_failing_an_unknown_job_is_not_found(uow: FakeUnitOfWork) -> None:
    with pytest.raises(JobNotFound):
        fail_job(uow, uuid4(), "who?")


def test_a_cancel_that_raises_is_logged_and_the_fail_stands(
        uow: FakeUnitOfWork, logs: CapturedLogs) -> None:
    cancel = FakeCanceller(error=ConnectionError("broker unreachable"))
    job_id = uow.add_job(State.COSTING)
    uow.open_attempt(job_id, State.COSTING, task_id="task-3")

    job = fail_job(uow, job_id, "stop", cancel=cancel)

    assert job.current_state is State.FAILED and uow.job(job_id) == job
    assert cancel.calls == [["task-3"]]
    (event,) = logs.events("job.cancel_failed")
    assert event["job_id"] == str(job_id)


# --- recover ----------------------------------------------------------------------------


def stale_job(uow: FakeUnitOfWork, state: State, age: float = STALE_AFTER + 1,
              correlation_id: str | None = "corr-1") -> UUID:
    job_id = uow.add_job(state, correlation_id=correlation_id)
    uow.age(job_id, age)
    return job_id


def run_recover(uow: FakeUnitOfWork, locks: FakeLocks, enqueue: FakeEnqueuer
                ) -> list[UUID]:
    return recover(uow, locks, enqueue, stale_after=STALE_AFTER)


def test_stale_unlocked_jobs_are_resumed_from_their_state(uow: FakeUnitOfWork) -> None:
    locks, enqueue = FakeLocks(), FakeEnqueuer()
    planning = stale_job(uow, State.PLANNING, age=1000, correlation_id="corr-p")
    costing = stale_job(uow, State.COSTING, age=500, correlation_id="corr-c")

    resumed = run_recover(uow, locks, enqueue)

    assert resumed == [planning, costing]  # the longest silent first
    assert enqueue.calls == [Enqueued(planning, State.PLANNING, "corr-p"),
                             Enqueued(costing, State.COSTING, "corr-c")]
    for job_id in resumed:
        row = uow.row(job_id)
        assert row.resume_count == 1 and row.last_progress_at == uow.clock.now()


def test_a_resume_counts_as_progress_so_the_next_pass_leaves_the_job(
        uow: FakeUnitOfWork) -> None:
    locks, enqueue = FakeLocks(), FakeEnqueuer()
    job_id = stale_job(uow, State.PARSING)
    assert run_recover(uow, locks, enqueue) == [job_id]

    uow.clock.advance(STALE_AFTER - 1)
    assert run_recover(uow, locks, enqueue) == []
    uow.clock.advance(2)
    assert run_recover(uow, locks, enqueue) == [job_id]
    assert uow.row(job_id).resume_count == 2


def test_a_locked_job_is_left_to_its_holder(uow: FakeUnitOfWork) -> None:
    locks, enqueue = FakeLocks(), FakeEnqueuer()
    job_id = stale_job(uow, State.ENRICHING)
    locks.hold(job_id)
    before = uow.snapshot()

    assert run_recover(uow, locks, enqueue) == []
    assert enqueue.calls == [] and uow.snapshot() == before


@pytest.mark.parametrize("state", [State.UPLOADED, State.COMPLETED, State.FAILED])
def test_unstarted_and_terminal_jobs_are_never_resumed(uow: FakeUnitOfWork, state: State
                                                       ) -> None:
    enqueue = FakeEnqueuer()
    stale_job(uow, state, age=10 * STALE_AFTER)

    assert run_recover(uow, FakeLocks(), enqueue) == []
    assert enqueue.calls == []


def test_a_job_with_recent_progress_or_a_retry_not_yet_due_is_left(
        uow: FakeUnitOfWork) -> None:
    # Given a job whose retry is due in 2 × STALE_AFTER, silent since it was scheduled
    enqueue = FakeEnqueuer()
    waiting = uow.add_job(State.PARSING)
    fence = uow.open_attempt(waiting, State.PARSING)
    with uow() as jobs:
        assert jobs.schedule_retry(waiting, State.PARSING, fence, delay=2 * STALE_AFTER)
    uow.clock.advance(2 * STALE_AFTER - 1)
    # And a job whose last progress is just younger than STALE_AFTER
    stale_job(uow, State.PLANNING, age=STALE_AFTER - 1)

    assert run_recover(uow, FakeLocks(), enqueue) == []
    assert enqueue.calls == []
    # Once the retry has been due for STALE_AFTER, its job is stale
    uow.clock.advance(STALE_AFTER + 2)
    assert waiting in run_recover(uow, FakeLocks(), enqueue)


def test_a_failed_enqueue_strands_none_of_the_batch(uow: FakeUnitOfWork,
                                                    logs: CapturedLogs) -> None:
    # Given three stalled jobs, and a broker that fails on the second enqueue
    ids = [stale_job(uow, State.PLANNING, age=age, correlation_id=f"corr-{n}")
           for n, age in enumerate((3000, 2000, 1000))]
    enqueue = FakeEnqueuer(fail_on={2})

    # When a recovery pass runs
    resumed = run_recover(uow, FakeLocks(), enqueue)

    # Then the others are enqueued and reported, the failed one is not reported
    assert resumed == [ids[0], ids[2]]
    assert [c.job_id for c in enqueue.sent] == [ids[0], ids[2]]
    (event,) = logs.events("recovery.enqueue_failed")
    assert (event["job_id"], event["correlation_id"]) == (str(ids[1]), "corr-1")
    assert event["stage"] == "PLANNING" and "broker unreachable" in event["error"]
    assert {e["job_id"] for e in logs.events("recovery.resume")} == {str(ids[0]), str(ids[2])}
    # And the failed one is not counted as resumed, and the very next pass takes it
    assert uow.row(ids[1]).resume_count == 0
    assert uow.row(ids[1]).last_progress_at == EPOCH
    uow.clock.advance(1)
    retry = FakeEnqueuer()
    assert run_recover(uow, FakeLocks(), retry) == [ids[1]]
    assert retry.calls == [Enqueued(ids[1], State.PLANNING, "corr-1")]


def test_with_the_broker_down_every_job_waits_for_the_next_pass(uow: FakeUnitOfWork) -> None:
    ids = [stale_job(uow, State.PARSING, age=age) for age in (2000, 1000)]

    assert run_recover(uow, FakeLocks(), FakeEnqueuer(fail_on={1, 2})) == []

    uow.clock.advance(1)
    assert run_recover(uow, FakeLocks(), FakeEnqueuer()) == ids


def test_a_job_claimed_while_its_enqueue_failed_is_not_unmarked(
        uow: FakeUnitOfWork, logs: CapturedLogs) -> None:
    # Given a stalled job that a worker claims (an old message of it, delivered late) at
    # the moment its resume fails to enqueue
    job_id = stale_job(uow, State.PLANNING)
    def a_worker_claims(job: UUID) -> None:
        uow.open_attempt(job, State.PLANNING)

    enqueue = FakeEnqueuer(fail_on={1}, during=a_worker_claims)

    assert run_recover(uow, FakeLocks(), enqueue) == []

    # Then its progress stands: the next pass does not take it from the worker
    row = uow.row(job_id)
    assert row.last_progress_at == uow.clock.now() and row.resume_count == 1
    uow.clock.advance(1)
    assert run_recover(uow, FakeLocks(), FakeEnqueuer()) == []
    assert [e["job_id"] for e in logs.events("recovery.unmark_skipped")] == [str(job_id)]


def test_if_unmarking_fails_too_the_pass_still_reports_what_it_enqueued(
        uow: FakeUnitOfWork, logs: CapturedLogs) -> None:
    ids = [stale_job(uow, State.COSTING, age=age) for age in (2000, 1000)]
    uow.fail_next("unmark_resumed", ConnectionError("database away"))

    assert run_recover(uow, FakeLocks(), FakeEnqueuer(fail_on={1})) == [ids[1]]

    (event,) = logs.events("recovery.unmark_failed")
    assert event["job_id"] == str(ids[0]) and "database away" in event["error"]
    assert uow.row(ids[0]).resume_count == 1  # still marked: stale again STALE_AFTER later
