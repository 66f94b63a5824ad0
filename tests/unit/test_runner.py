"""StageRunner on in-memory fakes of its ports: every outcome of one stage attempt, every
compare-and-set that can miss, the lock's two ways to be lost, and the time limits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest

from orchestrator.models import CANCELLED, WORKER_LOST, AttemptStatus
from orchestrator.runner import Advanced, Failed, Outcome, RetryLater, Skipped, StageRunner
from orchestrator.service import fail_job
from orchestrator.settings import Settings
from orchestrator.states import State
from tests.support.fakes import (
    CapturedLogs,
    FakeDownstream,
    FakeLocks,
    FakeUnitOfWork,
    Reply,
    Tables,
    default_output,
)
from tests.support.processes import wait_for

#: Deterministic backoff: retry k waits min(5, 3 × 2^(k−1)) seconds.
ENV = {"RETRY_JITTER": "false", "RETRY_BACKOFF_BASE": "3", "RETRY_BACKOFF_MAX": "5"}
PATIENCE = 30.0  # seconds a condition wait may take before the test fails; never a bound


class SoftTimeLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded: the runner is told it means "time's up"."""


@dataclass
class World:
    uow: FakeUnitOfWork
    locks: FakeLocks
    downstream: FakeDownstream
    runner: StageRunner

    def run(self, job_id: UUID, state: State, task_id: str | None = "task-1") -> Outcome:
        return self.runner.run(job_id, state, "corr-1", task_id)


def world(*replies: Reply, **env: str) -> World:
    uow, locks, downstream = FakeUnitOfWork(), FakeLocks(), FakeDownstream(*replies)
    runner = StageRunner(Settings.from_env({**ENV, **env}), uow, locks, downstream,
                         timeout_errors=(SoftTimeLimit,))
    return World(uow, locks, downstream, runner)


# --- success ----------------------------------------------------------------------------


def test_success_advances_the_job_and_lands_the_plan_reference() -> None:
    w = world(Reply.ok({"plan_reference": "plans/7", "extra": [1, 2]}))
    job_id = w.uow.add_job(State.PLANNING, input={"sample": "web-stack"})

    outcome = w.run(job_id, State.PLANNING)

    assert outcome == Advanced(State.PARSING)
    job = w.uow.job(job_id)
    assert (job.current_state, job.previous_state) == (State.PARSING, State.PLANNING)
    assert job.plan_reference == "plans/7" and job.fence == 1 and job.retry_count == 0
    (attempt,) = w.uow.attempts(job_id, State.PLANNING)
    assert (attempt.attempt_number, attempt.status) == (1, AttemptStatus.SUCCESS)
    assert attempt.output_data == {"plan_reference": "plans/7", "extra": [1, 2]}
    assert attempt.input_data == {"sample": "web-stack"}
    assert attempt.celery_task_id == "task-1" and attempt.fence == 1
    assert w.uow.transitions(job_id)[-1] == (State.PLANNING, State.PARSING)
    assert not w.locks.is_locked(job_id)  # released


def test_the_service_gets_attempt_allowed_input_and_what_is_left_of_the_timeout() -> None:
    w = world(Reply.ok())
    job_id = w.uow.add_job(State.PARSING)

    assert w.run(job_id, State.PARSING) == Advanced(State.ENRICHING)

    (call,) = w.downstream.calls
    assert (call.stage, call.job_id, call.attempt, call.allowed) == ("PARSING", job_id, 1, 3)
    assert call.input == default_output(State.PLANNING, job_id)  # PLANNING's output, whole
    assert call.correlation_id == "corr-1"
    assert 0 < call.timeout <= w.runner.settings.stage(State.PARSING).timeout


def test_costing_completes_the_job_with_its_result_reference() -> None:
    w = world(Reply.ok({"result_reference": "results/9", "currency": "USD"}))
    job_id = w.uow.add_job(State.COSTING)

    assert w.run(job_id, State.COSTING) == Advanced(State.COMPLETED)

    job = w.uow.job(job_id)
    assert job.current_state is State.COMPLETED and job.result_reference == "results/9"
    assert job.completed_at is not None


# --- transient and permanent failures ---------------------------------------------------


def test_a_transient_failure_with_retries_left_schedules_a_retry_with_backoff() -> None:
    w = world(Reply.transient("HTTP 503: busy"), Reply.transient("HTTP 503: busy"))
    job_id = w.uow.add_job(State.PLANNING)

    first = w.run(job_id, State.PLANNING)
    second = w.run(job_id, State.PLANNING)

    # retry 1 waits 3 × 2^0 = 3 s; retry 2 would wait 6 s, capped at RETRY_BACKOFF_MAX 5
    assert first == RetryLater(3.0, 1)
    assert second == RetryLater(5.0, 2)
    job = w.uow.job(job_id)
    assert job.current_state is State.PLANNING and job.retry_count == 2
    attempts = w.uow.attempts(job_id, State.PLANNING)
    assert [(a.attempt_number, a.status) for a in attempts] == [
        (1, AttemptStatus.FAILED), (2, AttemptStatus.FAILED)]
    assert attempts[0].error_message == "PLANNING attempt 1/3: HTTP 503: busy (terraform execution)"
    row = w.uow.row(job_id)
    assert row.next_attempt_at is not None
    assert (row.next_attempt_at - row.last_progress_at).total_seconds() == 5.0


def test_retry_after_raises_the_delay_past_the_backoff() -> None:
    w = world(Reply.transient("HTTP 429: slow down", retry_after=42))
    job_id = w.uow.add_job(State.PLANNING)

    assert w.run(job_id, State.PLANNING) == RetryLater(42.0, 1)


def test_with_jitter_the_delay_is_drawn_below_the_ceiling() -> None:
    w = world(Reply.transient(), RETRY_JITTER="true")
    job_id = w.uow.add_job(State.PLANNING)

    outcome = w.run(job_id, State.PLANNING)

    assert isinstance(outcome, RetryLater) and 0 <= outcome.delay < 3.0  # not the ceiling itself


def test_a_transient_failure_with_retries_spent_fails_the_job() -> None:
    # ENRICHING allows one retry: two attempts
    w = world(Reply.transient("HTTP 502: bad gateway"), Reply.transient("HTTP 504: late"))
    job_id = w.uow.add_job(State.ENRICHING)

    assert isinstance(w.run(job_id, State.ENRICHING), RetryLater)
    outcome = w.run(job_id, State.ENRICHING)

    assert isinstance(outcome, Failed)
    assert outcome.message == ("ENRICHING attempt 2/2: HTTP 504: late (pricing enricher) "
                               "(retries exhausted after 2 attempts)")
    job = w.uow.job(job_id)
    assert job.current_state is State.FAILED and job.error_message == outcome.message
    assert job.retry_count == 1 and job.completed_at is not None
    assert [a.status for a in w.uow.attempts(job_id)][-2:] == [AttemptStatus.FAILED] * 2
    assert w.uow.attempts(job_id, State.ENRICHING)[-1].error_message == outcome.message


def test_a_permanent_failure_fails_the_job_at_once() -> None:
    w = world(Reply.permanent("HTTP 422: no such plan"))
    job_id = w.uow.add_job(State.PLANNING)

    outcome = w.run(job_id, State.PLANNING)

    assert outcome == Failed("PLANNING attempt 1/3: HTTP 422: no such plan "
                             "(terraform execution)")
    job = w.uow.job(job_id)
    assert job.current_state is State.FAILED and job.retry_count == 0
    assert job.error_message == outcome.message
    assert len(w.downstream.calls) == 1
    (attempt,) = w.uow.attempts(job_id, State.PLANNING)
    assert attempt.status is AttemptStatus.FAILED


# --- fenced out: each compare-and-set that can miss writes nothing ----------------------


def test_fenced_out_at_the_claim_writes_nothing() -> None:
    # Given an operator who fails the job between the lock and the claim
    w = world()
    job_id = w.uow.add_job(State.PLANNING)
    snapshot: list[Tables] = []

    def operator_fails_it(job: UUID) -> None:
        operator_fail(w, job)
        snapshot.append(w.uow.snapshot())

    w.locks.on_acquire = operator_fails_it

    # When the stage tries to claim the job
    outcome = w.run(job_id, State.PLANNING)

    # Then it is skipped: no attempt opened, the service never called
    assert outcome == Skipped("job is FAILED, not PLANNING")
    assert w.uow.snapshot() == snapshot[0]
    assert w.uow.attempts(job_id) == [] and w.downstream.calls == []
    assert w.uow.job(job_id).error_message == "operator says stop"
    assert not w.locks.is_locked(job_id)


Interference = Callable[[World, UUID], None]


def another_claim(w: World, job_id: UUID) -> None:
    """Another worker took the job over (this one lost its lock): the fence moved on."""
    assert w.uow.claim(job_id, w.uow.job(job_id).current_state) is not None


def operator_fail(w: World, job_id: UUID) -> None:
    fail_job(w.uow, job_id, "operator says stop")


WRITES = {
    "advance": lambda during: Reply.ok(during=during),
    "schedule_retry": lambda during: Reply.transient(during=during),
    "give_up_permanent": lambda during: Reply.permanent(during=during),
}


@pytest.mark.parametrize("interference", [another_claim, operator_fail])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_fenced_out_while_the_service_answers_writes_nothing(
        write: str, interference: Interference) -> None:
    # Given a job that changes owner or state while its service is answering
    job_id = uuid4()
    snapshot: list[Tables] = []

    def during() -> None:
        interference(w, job_id)
        snapshot.append(w.uow.snapshot())

    w = world(WRITES[write](during))
    w.uow.add_job(State.PLANNING, job_id=job_id)

    # When the stage comes back
    outcome = w.run(job_id, State.PLANNING)

    # Then it is skipped, and nothing was written after the interference
    assert outcome == Skipped("fenced out")
    assert w.uow.snapshot() == snapshot[0]
    assert not w.locks.is_locked(job_id)


def test_fenced_out_when_giving_up_after_the_last_retry_writes_nothing() -> None:
    # ENRICHING's second and last attempt fails while another worker takes the job over
    job_id = uuid4()
    snapshot: list[Tables] = []

    def during() -> None:
        another_claim(w, job_id)
        snapshot.append(w.uow.snapshot())

    w = world(Reply.transient(), Reply.transient(during=during))
    w.uow.add_job(State.ENRICHING, job_id=job_id)
    assert isinstance(w.run(job_id, State.ENRICHING), RetryLater)

    assert w.run(job_id, State.ENRICHING) == Skipped("fenced out")
    assert w.uow.snapshot() == snapshot[0]
    assert w.uow.job(job_id).current_state is State.ENRICHING


def test_after_an_operator_fail_the_attempt_stays_cancelled_and_the_message_stands() -> None:
    w = world(Reply.ok(during=lambda: operator_fail(w, job_id)))
    job_id = w.uow.add_job(State.PLANNING)

    assert w.run(job_id, State.PLANNING) == Skipped("fenced out")

    job = w.uow.job(job_id)
    assert job.current_state is State.FAILED and job.error_message == "operator says stop"
    assert job.plan_reference is None
    (attempt,) = w.uow.attempts(job_id, State.PLANNING)
    assert (attempt.status, attempt.error_message) == (AttemptStatus.FAILED, CANCELLED)


# --- the lock ---------------------------------------------------------------------------


def test_a_busy_lock_skips_without_calling_the_service() -> None:
    w = world()
    job_id = w.uow.add_job(State.PLANNING)
    w.locks.hold(job_id)
    before = w.uow.snapshot()

    assert w.run(job_id, State.PLANNING) == Skipped("lock held by another worker")

    assert w.downstream.calls == []
    assert w.uow.snapshot() == before
    assert w.locks.owners[job_id] == "another worker"


def test_a_late_duplicate_meeting_the_next_stages_lock_says_the_job_moved_on() -> None:
    # Given a job in PARSING whose lock another worker holds for that stage
    w = world()
    job_id = w.uow.add_job(State.PARSING)
    w.locks.hold(job_id)
    before = w.uow.snapshot()

    # When a PLANNING message of it is delivered again
    with CapturedLogs() as logs:
        outcome = w.run(job_id, State.PLANNING)

    # Then it is skipped as a stage the job has left, not as a busy lock
    assert outcome == Skipped("job is PARSING, not PLANNING")
    assert not logs.events("lock.busy")
    assert w.downstream.calls == [] and w.uow.snapshot() == before
    assert w.locks.owners[job_id] == "another worker"


def test_a_lock_lost_mid_stage_discards_the_result() -> None:
    # Given a heartbeat every LOCK_TTL/3 s and a lock that expires and changes hands while
    # the service is answering (the worker was paused, say)
    job_id = uuid4()
    snapshot: list[Tables] = []

    def lose_the_lock() -> None:
        w.locks.steal(job_id)
        assert w.locks.extend_refused.wait(PATIENCE), "the heartbeat never tried to extend"
        snapshot.append(w.uow.snapshot())

    w = world(Reply.ok(during=lose_the_lock), LOCK_TTL="1")
    w.uow.add_job(State.PLANNING, job_id=job_id)

    # When the service answers after the heartbeat found the lock gone
    outcome = w.run(job_id, State.PLANNING)

    # Then the result is discarded: nothing written, though the fence still matched
    assert outcome == Skipped("lock lost during the stage; result discarded")
    assert w.uow.snapshot() == snapshot[0]
    job = w.uow.job(job_id)
    assert job.current_state is State.PLANNING and job.plan_reference is None
    assert w.uow.attempts(job_id, State.PLANNING)[-1].status is AttemptStatus.RUNNING
    assert w.locks.owners[job_id] == "another worker"  # not released by the loser


def test_the_heartbeat_extends_the_lock_and_records_a_sign_of_life() -> None:
    job_id = uuid4()

    def a_long_call() -> None:
        w.uow.clock.advance(600)
        wait_for(lambda: w.uow.row(job_id).last_progress_at == w.uow.clock.now(), PATIENCE,
                 "a heartbeat to record progress")

    w = world(Reply.ok(during=a_long_call), LOCK_TTL="1")
    w.uow.add_job(State.PLANNING, job_id=job_id)

    assert w.run(job_id, State.PLANNING) == Advanced(State.PARSING)
    assert w.locks.extended >= 1 and not w.locks.extend_refused.is_set()


def test_a_stage_stuck_past_its_timeout_and_grace_stops_renewing_its_lock(
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a stage stuck where its deadline cannot reach (here: a call that ignores it;
    # in a worker, anything outside the downstream call the watchdog cuts)
    job_id = uuid4()
    renewed_before: list[int] = []

    def overran() -> bool:
        return any(r.getMessage() == "stage.overran" for r in caplog.records)

    def stuck() -> None:
        wait_for(overran, PATIENCE, "the heartbeat to give the stage up")
        renewed_before.append(w.locks.extended)
        snapshot.append(w.uow.snapshot())

    snapshot: list[Tables] = []
    w = world(Reply.ok(during=stuck), LOCK_TTL="1", PLANNING_TIMEOUT="0.3",
              HARD_TIMEOUT_GRACE="1")
    w.uow.add_job(State.PLANNING, job_id=job_id)
    caplog.set_level("INFO")

    # When it finally returns
    outcome = w.run(job_id, State.PLANNING)

    # Then past 0.3 s + 1 s the heartbeat stopped renewing (so the lock expires and
    # recovery takes the job over) and the late result is discarded, nothing written
    assert outcome == Skipped("lock lost during the stage; result discarded")
    assert w.locks.extended == renewed_before[0]
    assert w.uow.snapshot() == snapshot[0]
    assert w.uow.attempts(job_id, State.PLANNING)[-1].status is AttemptStatus.RUNNING
    (record,) = [r for r in caplog.records if r.getMessage() == "stage.overran"]
    assert "past its timeout and grace (1.3s)" in record.__dict__["error"]


# --- attempts lost with their worker ----------------------------------------------------


def lose_attempts(uow: FakeUnitOfWork, job_id: UUID, state: State, count: int) -> None:
    """``count`` attempts whose worker died: each next one closes the previous as worker
    lost, and the last is still RUNNING (as after a SIGKILL)."""
    for n in range(count):
        uow.open_attempt(job_id, state, task_id=f"dead-{n}")


def test_too_many_lost_attempts_fail_the_job_without_calling_the_service() -> None:
    w = world(MAX_LOST_ATTEMPTS="2")
    job_id = w.uow.add_job(State.PLANNING)
    lose_attempts(w.uow, job_id, State.PLANNING, 2)

    outcome = w.run(job_id, State.PLANNING)

    assert outcome == Failed("PLANNING attempt 3/5: gave up after 2 attempts ended with "
                             "their worker lost")
    assert w.downstream.calls == []
    job = w.uow.job(job_id)
    assert job.current_state is State.FAILED and job.error_message == outcome.message
    attempts = w.uow.attempts(job_id, State.PLANNING)
    assert [(a.attempt_number, a.status, a.error_message) for a in attempts] == [
        (1, AttemptStatus.FAILED, WORKER_LOST), (2, AttemptStatus.FAILED, WORKER_LOST),
        (3, AttemptStatus.FAILED, outcome.message)]


def test_lost_attempts_below_the_cap_are_not_counted_as_retries() -> None:
    w = world(Reply.ok(), MAX_LOST_ATTEMPTS="2")
    job_id = w.uow.add_job(State.PLANNING)
    lose_attempts(w.uow, job_id, State.PLANNING, 1)

    assert w.run(job_id, State.PLANNING) == Advanced(State.PARSING)

    (call,) = w.downstream.calls
    assert (call.attempt, call.allowed) == (2, 4)  # 3 attempts, plus the lost one
    assert [a.error_message for a in w.uow.attempts(job_id, State.PLANNING)] == [
        WORKER_LOST, None]


# --- nothing to do ----------------------------------------------------------------------


@pytest.mark.parametrize("actual", [State.PARSING, State.FAILED, State.COMPLETED])
def test_a_job_not_in_that_state_is_skipped_and_nothing_is_written(actual: State) -> None:
    # (found by the claim, under the lock, which is then given back)
    w = world()
    job_id = w.uow.add_job(actual)
    before = w.uow.snapshot()

    outcome = w.run(job_id, State.PLANNING)

    assert outcome == Skipped(f"job is {actual.value}, not PLANNING")
    assert w.downstream.calls == [] and not w.locks.is_locked(job_id)
    assert w.uow.snapshot() == before


def test_an_unknown_job_is_skipped() -> None:
    w = world()
    job_id = uuid4()

    assert w.run(job_id, State.PLANNING) == Skipped("job not found")
    assert w.downstream.calls == [] and not w.locks.is_locked(job_id)


# --- time limits ------------------------------------------------------------------------


def test_a_time_limit_during_the_call_is_a_transient_timeout() -> None:
    w = world(Reply.raising(SoftTimeLimit()), PLANNING_TIMEOUT="12")
    job_id = w.uow.add_job(State.PLANNING)

    assert w.run(job_id, State.PLANNING) == RetryLater(3.0, 1)

    (attempt,) = w.uow.attempts(job_id, State.PLANNING)
    assert attempt.error_message == ("PLANNING attempt 1/3: timed out after 12s "
                                     "(terraform execution)")
    assert w.uow.job(job_id).retry_count == 1


def test_a_time_limit_on_the_last_attempt_fails_the_job() -> None:
    w = world(Reply.raising(SoftTimeLimit()), COSTING_MAX_RETRIES="0")
    job_id = w.uow.add_job(State.COSTING)

    outcome = w.run(job_id, State.COSTING)

    assert isinstance(outcome, Failed)
    assert outcome.message.startswith("COSTING attempt 1/1: timed out after 60s")
    assert outcome.message.endswith("(retries exhausted after 1 attempts)")


def test_a_time_limit_during_a_write_rolls_it_back_and_skips() -> None:
    # The limit lands inside the advancing transaction: nothing half-written
    w = world(Reply.ok(during=lambda: w.uow.fail_next("finish_attempt", SoftTimeLimit())))
    job_id = w.uow.add_job(State.PLANNING)

    assert w.run(job_id, State.PLANNING) == Skipped("interrupted")

    job = w.uow.job(job_id)
    assert job.current_state is State.PLANNING and job.plan_reference is None
    assert w.uow.attempts(job_id, State.PLANNING)[-1].status is AttemptStatus.RUNNING
    assert not w.locks.is_locked(job_id)


def test_an_unexpected_error_escapes_and_the_lock_is_released() -> None:
    w = world(Reply.raising(RuntimeError("bug")))
    job_id = w.uow.add_job(State.PLANNING)

    with pytest.raises(RuntimeError, match="bug"):
        w.run(job_id, State.PLANNING)
    assert not w.locks.is_locked(job_id)


def test_a_release_that_fails_leaves_what_the_stage_did_standing() -> None:
    # Given a lock whose store becomes unreachable while the stage runs
    w = world(Reply.ok({"plan_reference": "plans/7"}))
    job_id = w.uow.add_job(State.PLANNING)
    w.locks.release_error = ConnectionError("Redis is gone")

    with CapturedLogs() as logs:
        outcome = w.run(job_id, State.PLANNING)

    # Then the job has moved on and the outcome says so (its next stage is sent), the
    # lock left to its TTL, and the log says why
    assert outcome == Advanced(State.PARSING)
    assert w.uow.job(job_id).current_state is State.PARSING
    assert w.locks.is_locked(job_id)
    [failed] = logs.events("lock.release_failed")
    assert failed["level"] == "WARNING" and "Redis is gone" in failed["error"]


def killed(w: World, job_id: UUID, state: State = State.PLANNING) -> None:
    """The process running ``state`` for task-9 was killed by the hard time limit: its
    attempt is still RUNNING and its lock still held by the dead holder."""
    w.uow.open_attempt(job_id, state, task_id="task-9")
    w.locks.hold(job_id, "dead holder")


def test_hard_timeout_closes_the_attempt_retries_and_breaks_the_dead_lock() -> None:
    w = world(PLANNING_TIMEOUT="12")
    job_id = w.uow.add_job(State.PLANNING)
    killed(w, job_id)

    outcome = w.runner.hard_timeout(job_id, State.PLANNING, "corr-1", "task-9")

    assert outcome == RetryLater(3.0, 1)
    (attempt,) = w.uow.attempts(job_id, State.PLANNING)
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error_message == (
        "PLANNING attempt 1/3: timed out after 12s (hard time limit: worker process killed) "
        "(terraform execution)")
    assert w.uow.job(job_id).retry_count == 1
    assert w.locks.forced == [job_id] and not w.locks.is_locked(job_id)


def test_hard_timeout_on_the_last_attempt_fails_the_job() -> None:
    w = world(PLANNING_MAX_RETRIES="0")
    job_id = w.uow.add_job(State.PLANNING)
    killed(w, job_id)

    outcome = w.runner.hard_timeout(job_id, State.PLANNING, "corr-1", "task-9")

    assert isinstance(outcome, Failed) and "hard time limit" in outcome.message
    assert w.uow.job(job_id).current_state is State.FAILED
    assert w.locks.forced == [job_id]


def test_hard_timeout_of_a_task_with_no_open_attempt_is_skipped() -> None:
    w = world()
    job_id = w.uow.add_job(State.PLANNING)
    killed(w, job_id)
    before = w.uow.snapshot()

    outcome = w.runner.hard_timeout(job_id, State.PLANNING, "corr-1", "another-task")

    assert outcome == Skipped("no open attempt for the timed-out task")
    assert w.uow.snapshot() == before
    assert w.locks.forced == [] and w.locks.is_locked(job_id)


def test_hard_timeout_of_a_fenced_out_attempt_writes_nothing_and_keeps_the_lock() -> None:
    # Given the killed attempt's job claimed since by another worker, which holds the lock
    w = world()
    job_id = w.uow.add_job(State.PLANNING)
    killed(w, job_id)
    another_claim(w, job_id)
    w.locks.hold(job_id, "the new owner")
    before = w.uow.snapshot()

    outcome = w.runner.hard_timeout(job_id, State.PLANNING, "corr-1", "task-9")

    assert outcome == Skipped("fenced out")
    assert w.uow.snapshot() == before
    assert w.locks.forced == [] and w.locks.owners[job_id] == "the new owner"


def test_a_stage_shorter_than_a_heartbeat_interval_never_starts_a_heartbeat_thread(
        ) -> None:
    # Given stages that end well within LOCK_TTL/3 (10 s)
    started: list[str] = []
    original = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        original(thread)

    w = world(Reply.ok(), Reply.ok(), LOCK_TTL="30")
    jobs = [w.uow.add_job(State.PLANNING) for _ in range(2)]
    threading.Thread.start = recording_start  # type: ignore[method-assign]
    try:
        for job_id in jobs:
            assert w.run(job_id, State.PLANNING) == Advanced(State.PARSING)
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]

    # Then no heartbeat thread was started for them (the lock was never extended either)
    assert not [name for name in started if name.startswith("heartbeat-") and
                name != "heartbeat-starter"]
    assert w.locks.extended == 0
