"""In-memory fakes of the ports in :mod:`orchestrator.ports`, for unit tests of the use cases.

:class:`FakeUnitOfWork` keeps jobs, attempts and transitions in plain dataclasses and
mirrors ``db/repository.py``: every write that changes a job is a compare-and-set on its
state (and on its fence when given) that reports a miss as None/False; every move goes
through the state machine first, so an illegal one raises as it does in the product.
``with uow() as jobs:`` works on a copy of the tables, committed only if the block ends
cleanly; blocks run one at a time (the simplest isolation there is). Its clock moves only
when a test says so.

The other fakes record what they were asked and can be told to refuse or fail:
:class:`FakeLocks` (owners, a busy or lost lock), :class:`FakeEnqueuer`,
:class:`FakeCanceller` and :class:`FakeDownstream`, whose scripted :class:`Reply` may run
a callback while the call is in flight.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

from orchestrator.errors import PermanentStageError, TransientStageError
from orchestrator.logs import configure_logging
from orchestrator.models import (
    WORKER_LOST,
    AttemptCounts,
    AttemptStatus,
    Job,
    JobDetail,
    OpenedAttempt,
    StageAttempt,
    StartedJob,
    Transition,
)
from orchestrator.outcomes import attempt_label
from orchestrator.stages import STAGE_STATES, StageSpec, definition_for
from orchestrator.states import PIPELINE, TERMINAL, State, transition

START = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FakeClock:
    """Time that moves only when told: timestamps, staleness and durations read it."""

    def __init__(self, start: datetime = START):
        self._now = start
        self._mutex = threading.Lock()

    def now(self) -> datetime:
        with self._mutex:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._mutex:
            self._now += timedelta(seconds=seconds)


# --- the tables -------------------------------------------------------------------------


@dataclass
class JobRow:
    """A row of ``jobs``, bookkeeping columns included."""

    job_id: UUID
    current_state: State
    input: dict[str, Any]
    correlation_id: str | None
    created_at: datetime
    updated_at: datetime
    last_progress_at: datetime
    previous_state: State | None = None
    retry_count: int = 0
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    plan_reference: str | None = None
    result_reference: str | None = None
    fence: int = 0
    next_attempt_at: datetime | None = None
    resume_count: int = 0
    state_reason: str | None = None

    def job(self) -> Job:
        return Job(job_id=self.job_id, current_state=self.current_state,
                   previous_state=self.previous_state, retry_count=self.retry_count,
                   error_message=self.error_message, created_at=self.created_at,
                   updated_at=self.updated_at, started_at=self.started_at,
                   completed_at=self.completed_at, plan_reference=self.plan_reference,
                   result_reference=self.result_reference, correlation_id=self.correlation_id,
                   fence=self.fence, input=copy.deepcopy(self.input))


_COLUMNS = frozenset(f.name for f in fields(JobRow)) - {"job_id"}


@dataclass
class AttemptRow:
    """A row of ``stage_executions``."""

    job_id: UUID
    stage_name: str
    attempt_number: int
    status: AttemptStatus
    started_at: datetime
    input_data: dict[str, Any]
    fence: int
    celery_task_id: str | None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    output_data: dict[str, Any] | None = None
    error_message: str | None = None


@dataclass
class TransitionRow:
    job_id: UUID
    from_state: State
    to_state: State
    at: datetime
    reason: str | None


@dataclass
class Tables:
    jobs: dict[UUID, JobRow] = field(default_factory=dict)
    attempts: list[AttemptRow] = field(default_factory=list)
    transitions: list[TransitionRow] = field(default_factory=list)
    #: The enqueue outbox: job id → the state its chain is owed from.
    enqueues: dict[UUID, State] = field(default_factory=dict)


class FakeIntegrityError(Exception):
    """What PostgreSQL's constraints would refuse (a duplicate attempt, a second success)."""


# --- the repository and the unit of work ------------------------------------------------


class FakeRepository:
    """:class:`orchestrator.ports.JobRepository` over one transaction's copy of the tables."""

    def __init__(self, tables: Tables, clock: FakeClock, faults: dict[str, BaseException]):
        self.t, self.clock, self._faults = tables, clock, faults

    def _enter(self, method: str) -> datetime:
        fault = self._faults.pop(method, None)
        if fault is not None:
            raise fault
        return self.clock.now()

    def _owned(self, job_id: UUID, state: State, fence: int | None) -> JobRow | None:
        row = self.t.jobs.get(job_id)
        if row is None or row.current_state is not state:
            return None
        if fence is not None and row.fence != fence:
            return None
        return row

    def _running(self, job_id: UUID, stage: str | None = None) -> list[AttemptRow]:
        return [a for a in self.t.attempts
                if a.job_id == job_id and a.status is AttemptStatus.RUNNING
                and (stage is None or a.stage_name == stage)]

    def _close(self, attempt: AttemptRow, status: AttemptStatus, now: datetime, *,
               output: dict[str, Any] | None = None, error: str | None = None) -> None:
        attempt.status, attempt.completed_at = status, now
        attempt.duration_ms = int((now - attempt.started_at).total_seconds() * 1000)
        attempt.output_data, attempt.error_message = copy.deepcopy(output), error

    def get(self, job_id: UUID, *, for_update: bool = False) -> Job | None:
        self._enter("get")
        row = self.t.jobs.get(job_id)
        return row.job() if row else None

    def insert_if_absent(self, job_id: UUID, input: dict[str, Any],
                         correlation_id: str | None, *, redriven_from: UUID | None = None
                         ) -> bool:
        now = self._enter("insert_if_absent")
        if job_id in self.t.jobs:
            return False
        self.t.jobs[job_id] = JobRow(job_id, State.UPLOADED, copy.deepcopy(input),
                                     correlation_id, now, now, now)
        return True

    def start(self, job_id: UUID, input: dict[str, Any], correlation_id: str | None, *,
              check_input: bool, reason: str, outbox_delay: float,
              redriven_from: UUID | None = None) -> StartedJob:
        self._enter("start")
        created = self.insert_if_absent(job_id, input, correlation_id,
                                        redriven_from=redriven_from)
        if not created and check_input:
            existing = self.get(job_id)
            if existing is not None and existing.input != input:
                return StartedJob(job=existing, created=False, moved=False, mismatch=True)
        moved = self.move(job_id, State.UPLOADED, State.PLANNING, reason)
        if moved is not None:
            self.t.enqueues.setdefault(job_id, State.PLANNING)  # the chain it is owed
        return StartedJob(job=moved or self.get(job_id), created=created,
                          moved=moved is not None)

    def move(self, job_id: UUID, from_state: State, to_state: State, reason: str, *,
             fence: int | None = None, error_message: str | None = None,
             fields: dict[str, Any] | None = None) -> Job | None:
        now = self._enter("move")
        transition(from_state, to_state, job_id=str(job_id))  # refused in code first
        unknown = set(fields or {}) - _COLUMNS
        if unknown:
            raise KeyError(f"no such column: {sorted(unknown)}")
        row = self._owned(job_id, from_state, fence)
        if row is None:
            return None
        row.current_state, row.previous_state, row.state_reason = to_state, from_state, reason
        row.updated_at = row.last_progress_at = now
        row.next_attempt_at = None
        for name, value in (fields or {}).items():
            setattr(row, name, value)
        if from_state is State.UPLOADED and row.started_at is None:
            row.started_at = now
        if to_state in TERMINAL:
            row.completed_at = now
        if error_message is not None:
            row.error_message = error_message
        self.t.transitions.append(TransitionRow(job_id, from_state, to_state, now, reason))
        return row.job()

    def claim(self, job_id: UUID, state: State) -> int | None:
        now = self._enter("claim")
        row = self._owned(job_id, state, None)
        if row is None:
            return None
        row.fence += 1
        row.last_progress_at, row.next_attempt_at = now, None
        return row.fence

    def heartbeat(self, job_id: UUID, state: State, fence: int) -> bool:
        now = self._enter("heartbeat")
        row = self._owned(job_id, state, fence)
        if row is not None:
            row.last_progress_at = now
        return row is not None

    def schedule_retry(self, job_id: UUID, state: State, fence: int, delay: float) -> bool:
        now = self._enter("schedule_retry")
        row = self._owned(job_id, state, fence)
        if row is None:
            return False
        row.retry_count += 1
        row.updated_at = row.last_progress_at = now
        row.next_attempt_at = now + timedelta(seconds=delay)
        return True

    def attempt_counts(self, job_id: UUID, stage: str) -> AttemptCounts:
        self._enter("attempt_counts")
        mine = [a for a in self.t.attempts if a.job_id == job_id and a.stage_name == stage]
        return AttemptCounts(
            total=len(mine),
            failed=sum(a.status is AttemptStatus.FAILED and a.error_message != WORKER_LOST
                       for a in mine),
            lost=sum(a.status is AttemptStatus.RUNNING or a.error_message == WORKER_LOST
                     for a in mine))

    def start_attempt(self, job_id: UUID, stage: str, attempt: int, input: dict[str, Any],
                      *, fence: int, task_id: str | None) -> None:
        now = self._enter("start_attempt")
        if State(stage) not in STAGE_STATES:
            raise FakeIntegrityError(f"not a stage: {stage}")
        for running in self._running(job_id, stage):
            self._close(running, AttemptStatus.FAILED, now, error=WORKER_LOST)
        if any(a.job_id == job_id and a.stage_name == stage and a.attempt_number == attempt
               for a in self.t.attempts):
            raise FakeIntegrityError(f"{stage} attempt {attempt} exists already")
        self.t.attempts.append(AttemptRow(job_id, stage, attempt, AttemptStatus.RUNNING, now,
                                          copy.deepcopy(input), fence, task_id))

    def open_attempt(self, job_id: UUID, state: State, task_id: str | None
                     ) -> OpenedAttempt | None:
        """The product's one statement, as the steps it is made of."""
        self._enter("open_attempt")
        fence = self.claim(job_id, state)
        if fence is None:
            return None
        before = self.attempt_counts(job_id, state.value)
        stage_input = self.stage_input(job_id, state)
        self.start_attempt(job_id, state.value, before.total + 1, stage_input, fence=fence,
                           task_id=task_id)
        return OpenedAttempt(fence, before, before.total + 1, stage_input,
                             self.t.jobs[job_id].correlation_id)

    def advance(self, job_id: UUID, state: State, to_state: State, reason: str, *,
                fence: int, attempt: int, output: dict[str, Any],
                fields: dict[str, Any] | None = None, reused_from: UUID | None = None
                ) -> Job | None:
        """The product's one statement, as the steps it is made of (redrives are tested
        against PostgreSQL only: ``reused_from`` is not recorded here)."""
        self._enter("advance")
        moved = self.move(job_id, state, to_state, reason, fence=fence, fields=fields)
        if moved is not None:
            self.finish_attempt(job_id, state.value, attempt, success=True, output=output)
        return moved

    def running_attempt(self, job_id: UUID, stage: str, task_id: str
                        ) -> tuple[int, int, float] | None:
        now = self._enter("running_attempt")
        for a in self._running(job_id, stage):
            if a.celery_task_id == task_id:
                return a.attempt_number, a.fence, (now - a.started_at).total_seconds()
        return None

    def finish_attempt(self, job_id: UUID, stage: str, attempt: int, *, success: bool,
                       output: dict[str, Any] | None = None,
                       error: str | None = None) -> bool:
        now = self._enter("finish_attempt")
        for a in self._running(job_id, stage):
            if a.attempt_number == attempt:
                if success and any(o.job_id == job_id and o.stage_name == stage
                                   and o.status is AttemptStatus.SUCCESS
                                   for o in self.t.attempts):
                    raise FakeIntegrityError(f"a second SUCCESS of {stage}")
                status = AttemptStatus.SUCCESS if success else AttemptStatus.FAILED
                self._close(a, status, now, output=output, error=error)
                return True
        return False

    def close_running_attempts(self, job_id: UUID, error: str) -> list[str]:
        now = self._enter("close_running_attempts")
        closed = self._running(job_id)
        for a in closed:
            self._close(a, AttemptStatus.FAILED, now, error=error)
        return [a.celery_task_id for a in closed if a.celery_task_id]

    def stage_input(self, job_id: UUID, state: State) -> dict[str, Any]:
        self._enter("stage_input")
        index = STAGE_STATES.index(state)
        if index == 0:
            return copy.deepcopy(self.t.jobs[job_id].input)
        previous = STAGE_STATES[index - 1].value
        for a in self.t.attempts:
            if (a.job_id == job_id and a.stage_name == previous
                    and a.status is AttemptStatus.SUCCESS):
                return copy.deepcopy(a.output_data or {})
        return {}

    def enqueue_sent(self, job_id: UUID) -> None:
        self._enter("enqueue_sent")
        self.t.enqueues.pop(job_id, None)

    def detail(self, job_id: UUID) -> JobDetail | None:
        self._enter("detail")
        row = self.t.jobs.get(job_id)
        if row is None:
            return None
        transitions = [Transition(t.from_state, t.to_state, t.at, t.reason)
                       for t in self.t.transitions if t.job_id == job_id]
        stages = [StageAttempt(a.stage_name, a.attempt_number, a.status, a.started_at,
                               a.completed_at, a.duration_ms, a.error_message)
                  for a in sorted((a for a in self.t.attempts if a.job_id == job_id),
                                  key=lambda a: a.started_at)]
        result = None
        if row.current_state is State.COMPLETED:
            result = next((copy.deepcopy(a.output_data) for a in self.t.attempts
                           if a.job_id == job_id and a.stage_name == State.COSTING.value
                           and a.status is AttemptStatus.SUCCESS), None)
        return JobDetail(row.job(), transitions, stages, result)

    def list_jobs(self, state: State | None, limit: int,
                  after: tuple[datetime, UUID] | None) -> list[Job]:
        self._enter("list_jobs")
        rows = sorted(self.t.jobs.values(), key=lambda r: (r.created_at, r.job_id), reverse=True)
        return [r.job() for r in rows
                if (state is None or r.current_state is state)
                and (after is None or (r.created_at, r.job_id) < after)][:limit]

    def stale_jobs(self, stale_after: float, limit: int) -> list[Job]:
        now = self._enter("stale_jobs")
        cutoff = now - timedelta(seconds=stale_after)
        rows = [r for r in self.t.jobs.values()
                if r.current_state not in (*TERMINAL, State.UPLOADED)
                and r.last_progress_at < cutoff
                and (r.next_attempt_at is None or r.next_attempt_at < cutoff)]
        return [r.job() for r in sorted(rows, key=lambda r: r.last_progress_at)[:limit]]

    def mark_resumed(self, job_id: UUID) -> None:
        now = self._enter("mark_resumed")
        row = self.t.jobs.get(job_id)
        if row is not None:
            row.last_progress_at, row.next_attempt_at = now, None
            row.resume_count += 1

    def unmark_resumed(self, job_id: UUID, state: State, fence: int) -> bool:
        self._enter("unmark_resumed")
        row = self._owned(job_id, state, fence)
        if row is None:
            return False
        row.last_progress_at = EPOCH
        row.resume_count = max(row.resume_count - 1, 0)
        return True


class FakeUnitOfWork:
    """:data:`orchestrator.ports.UnitOfWork` in memory: ``with uow() as jobs:`` works on a
    copy of :attr:`tables`, committed when the block ends cleanly, dropped if it raises.
    Blocks run one at a time; opening one inside another (in one thread) is a test error.
    """

    def __init__(self, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.tables = Tables()
        self.commits = 0
        self._txn = threading.Lock()
        self._holder: int | None = None
        self._faults: dict[str, BaseException] = {}

    @contextmanager
    def __call__(self, *, single: bool = False) -> Iterator[FakeRepository]:
        if self._holder == threading.get_ident():
            raise AssertionError("a unit of work opened inside another one")
        with self._txn:
            self._holder = threading.get_ident()
            try:
                working = copy.deepcopy(self.tables)
                yield FakeRepository(working, self.clock, self._faults)
                self.tables = working
                self.commits += 1
            finally:
                self._holder = None

    def fail_next(self, method: str, error: BaseException) -> None:
        """The next call of the repository's ``method`` raises ``error`` instead."""
        if not callable(getattr(FakeRepository, method, None)):
            raise AttributeError(method)
        self._faults[method] = error

    # What a test reads: committed data, copied.

    def snapshot(self) -> Tables:
        with self._txn:
            return copy.deepcopy(self.tables)

    def row(self, job_id: UUID) -> JobRow:
        return self.snapshot().jobs[job_id]

    def job(self, job_id: UUID) -> Job:
        return self.row(job_id).job()

    def attempts(self, job_id: UUID, stage: State | None = None) -> list[AttemptRow]:
        return [a for a in self.snapshot().attempts
                if a.job_id == job_id and (stage is None or a.stage_name == stage.value)]

    def transitions(self, job_id: UUID) -> list[tuple[State, State]]:
        return [(t.from_state, t.to_state) for t in self.snapshot().transitions
                if t.job_id == job_id]

    # How a test sets the scene: through the repository, so the rules hold there too.

    def add_job(self, state: State, *, input: dict[str, Any] | None = None,
                correlation_id: str | None = "corr-1", job_id: UUID | None = None) -> UUID:
        """A job walked to ``state`` the legal way; each stage it passed succeeded once
        with :func:`default_output`. FAILED is reached from PLANNING."""
        job_id = job_id or uuid4()
        path = ([State.UPLOADED, State.PLANNING, State.FAILED] if state is State.FAILED
                else list(PIPELINE[:PIPELINE.index(state) + 1]))
        with self() as jobs:
            jobs.insert_if_absent(job_id, input or {}, correlation_id)
            for here, there in itertools.pairwise(path):
                fields: dict[str, Any] = {}
                fence = None
                if there is not State.FAILED and here in STAGE_STATES:
                    output = default_output(here, job_id)
                    fence = jobs.claim(job_id, here)
                    assert fence is not None
                    jobs.start_attempt(job_id, here.value, 1, {}, fence=fence, task_id=None)
                    jobs.finish_attempt(job_id, here.value, 1, success=True, output=output)
                    required = definition_for(here).required_field
                    if required:
                        fields[required] = output[required]
                moved = jobs.move(job_id, here, there, "scene", fence=fence, fields=fields,
                                  error_message="failed in the scene"
                                  if there is State.FAILED else None)
                assert moved is not None
        return job_id

    def open_attempt(self, job_id: UUID, state: State, *, task_id: str | None = None) -> int:
        """Claim the job and open its next attempt of ``state``, as a worker would just
        before calling the service (closing any RUNNING one as worker lost); the fence."""
        with self() as jobs:
            fence = jobs.claim(job_id, state)
            assert fence is not None, f"job is not in {state}"
            total = jobs.attempt_counts(job_id, state.value).total
            jobs.start_attempt(job_id, state.value, total + 1, {}, fence=fence,
                               task_id=task_id)
        return fence

    def claim(self, job_id: UUID, state: State) -> int | None:
        """Another worker claims the job (the fence moves on)."""
        with self() as jobs:
            return jobs.claim(job_id, state)

    def age(self, job_id: UUID, seconds: float) -> None:
        """Date the job's last progress ``seconds`` before now."""
        with self._txn:
            row = self.tables.jobs[job_id]
            row.last_progress_at = self.clock.now() - timedelta(seconds=seconds)


def default_output(state: State, job_id: UUID) -> dict[str, Any]:
    """An output of ``state``'s service with the field the orchestrator requires of it."""
    output: dict[str, Any] = {"stage": state.value}
    required = definition_for(state).required_field
    if required:
        output[required] = f"{required}-{job_id}"
    return output


# --- the lock ---------------------------------------------------------------------------


class FakeLocks:
    """:class:`orchestrator.ports.LockFactory`: one owner token per job. :meth:`hold` makes
    a job's lock busy, :meth:`expire` and :meth:`steal` make its holder lose it, and
    ``on_acquire`` runs just after a successful acquire (between the lock and the claim)."""

    def __init__(self) -> None:
        self.owners: dict[UUID, str] = {}
        self.forced: list[UUID] = []
        self.acquired = 0
        self.extended = 0
        self.extend_refused = threading.Event()
        self.on_acquire: Callable[[UUID], None] | None = None
        #: Raised by every release while set (the lock's store unreachable).
        self.release_error: Exception | None = None
        self._tokens = itertools.count(1)
        self._mutex = threading.Lock()

    def __call__(self, job_id: UUID) -> FakeLock:
        return FakeLock(self, job_id, f"holder-{next(self._tokens)}")

    def is_locked(self, job_id: UUID) -> bool:
        with self._mutex:
            return job_id in self.owners

    def force_release(self, job_id: UUID) -> None:
        with self._mutex:
            self.forced.append(job_id)
            self.owners.pop(job_id, None)

    def hold(self, job_id: UUID, owner: str = "another worker") -> None:
        with self._mutex:
            self.owners[job_id] = owner

    def expire(self, job_id: UUID) -> None:
        with self._mutex:
            self.owners.pop(job_id, None)

    def steal(self, job_id: UUID, owner: str = "another worker") -> None:
        """The lock expired and another worker took it."""
        self.hold(job_id, owner)


class FakeLock:
    def __init__(self, locks: FakeLocks, job_id: UUID, token: str):
        self.locks, self.job_id, self.token = locks, job_id, token

    def acquire(self) -> bool:
        with self.locks._mutex:
            if self.job_id in self.locks.owners:
                return False
            self.locks.owners[self.job_id] = self.token
            self.locks.acquired += 1
        if self.locks.on_acquire is not None:
            self.locks.on_acquire(self.job_id)
        return True

    def extend(self) -> bool:
        with self.locks._mutex:
            if self.locks.owners.get(self.job_id) == self.token:
                self.locks.extended += 1
                return True
        self.locks.extend_refused.set()
        return False

    def release(self) -> bool:
        if self.locks.release_error is not None:
            raise self.locks.release_error
        with self.locks._mutex:
            if self.locks.owners.get(self.job_id) != self.token:
                return False
            del self.locks.owners[self.job_id]
            return True


# --- the broker -------------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    job_id: UUID
    from_state: State
    correlation_id: str | None


class FakeEnqueuer:
    """:class:`orchestrator.ports.Enqueuer`: records every call; the calls numbered in
    ``fail_on`` (from 1) raise ConnectionError, as Celery does with its broker down.
    ``during`` runs at each call, before it succeeds or fails."""

    def __init__(self, *, fail_on: Collection[int] = (),
                 during: Callable[[UUID], None] | None = None):
        self.fail_on, self.during = fail_on, during
        self.calls: list[Enqueued] = []
        self.sent: list[Enqueued] = []

    def __call__(self, job_id: UUID, from_state: State, correlation_id: str | None) -> None:
        call = Enqueued(job_id, from_state, correlation_id)
        self.calls.append(call)
        if self.during is not None:
            self.during(job_id)
        if len(self.calls) in self.fail_on:
            raise ConnectionError(f"broker unreachable (call {len(self.calls)})")
        self.sent.append(call)


class FakeCanceller:
    """:class:`orchestrator.ports.Canceller`: records the task ids; raises ``error`` if set."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls: list[list[str]] = []

    def __call__(self, task_ids: list[str]) -> None:
        self.calls.append(list(task_ids))
        if self.error is not None:
            raise self.error


# --- the downstream services ------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer of :class:`FakeDownstream`; ``during`` runs while the call is
    in flight (an operator's fail, another worker's claim, a lost lock)."""

    kind: Literal["output", "transient", "permanent", "raise"]
    output: dict[str, Any] | None = None
    text: str = ""
    retry_after: float | None = None
    error: BaseException | None = None
    during: Callable[[], None] | None = None

    @classmethod
    def ok(cls, output: dict[str, Any] | None = None, *,
           during: Callable[[], None] | None = None) -> Reply:
        """The output, or :func:`default_output` when None."""
        return cls("output", output=output, during=during)

    @classmethod
    def transient(cls, text: str = "HTTP 503: busy", *, retry_after: float | None = None,
                  during: Callable[[], None] | None = None) -> Reply:
        return cls("transient", text=text, retry_after=retry_after, during=during)

    @classmethod
    def permanent(cls, text: str = "HTTP 422: no such plan", *,
                  during: Callable[[], None] | None = None) -> Reply:
        return cls("permanent", text=text, during=during)

    @classmethod
    def raising(cls, error: BaseException, *,
                during: Callable[[], None] | None = None) -> Reply:
        """Raise ``error`` as is (a time limit landing mid-call, a bug)."""
        return cls("raise", error=error, during=during)


@dataclass(frozen=True)
class Call:
    stage: str
    job_id: UUID
    attempt: int
    input: dict[str, Any]
    correlation_id: str | None
    timeout: float
    allowed: int | None


class FakeDownstream:
    """:class:`orchestrator.ports.Downstream` answering from a script, one :class:`Reply`
    per call in order; errors are worded as the HTTP adapter words them (``PLANNING
    attempt 1/3: …``). A call beyond the script fails the test."""

    def __init__(self, *replies: Reply):
        self.replies = list(replies)
        self.calls: list[Call] = []

    def __call__(self, spec: StageSpec, job_id: UUID, attempt: int, input: dict[str, Any],
                 correlation_id: str | None, timeout: float, allowed: int | None = None
                 ) -> dict[str, Any]:
        self.calls.append(Call(spec.name, job_id, attempt, copy.deepcopy(input),
                               correlation_id, timeout, allowed))
        if not self.replies:
            raise AssertionError(f"{spec.name} called more often than scripted")
        reply = self.replies.pop(0)
        if reply.during is not None:
            reply.during()
        message = (f"{attempt_label(spec, attempt, allowed)}: {reply.text} "
                   f"({spec.definition.service})")
        if reply.kind == "transient":
            raise TransientStageError(message, stage=spec.name, status=503,
                                      retry_after=reply.retry_after)
        if reply.kind == "permanent":
            raise PermanentStageError(message, stage=spec.name, status=422)
        if reply.kind == "raise":
            assert reply.error is not None
            raise reply.error
        if reply.output is None:
            return default_output(spec.state, job_id)
        return copy.deepcopy(reply.output)


# --- the logs ---------------------------------------------------------------------------


class CapturedLogs:
    """The product's JSON log lines, as the product writes them, for the length of a
    ``with`` block; the root logger is put back as it was afterwards."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self._saved: tuple[list[logging.Handler], int] | None = None

    def __enter__(self) -> CapturedLogs:
        root = logging.getLogger()
        self._saved = (root.handlers[:], root.level)
        configure_logging("DEBUG", self.stream)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        root = logging.getLogger()
        root.handlers[:], level = self._saved
        root.setLevel(level)
        logging.captureWarnings(False)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [line for line in lines if name is None or line.get("event") == name]
