"""The interfaces the use cases need from the outside world, as Protocols.

``db/`` implements :class:`JobRepository` and :class:`UnitOfWork` on PostgreSQL,
``tasks/`` implements :class:`JobLock` on Redis, :class:`Enqueuer` on Celery and
:class:`Downstream` on requests. Every repository write that changes a job is a
compare-and-set: it returns None/False when the job was not as expected.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from orchestrator.models import (
    AttemptCounts,
    Job,
    JobDetail,
    Notification,
    OpenedAttempt,
    PendingEnqueue,
    StartedJob,
    TerminalEvent,
)
from orchestrator.stages import StageSpec
from orchestrator.states import State


class JobRepository(Protocol):
    def get(self, job_id: UUID, *, for_update: bool = False) -> Job | None: ...

    def insert_if_absent(self, job_id: UUID, input: dict[str, Any],
                         correlation_id: str | None, *, redriven_from: UUID | None = None
                         ) -> bool: ...

    def start(self, job_id: UUID, input: dict[str, Any], correlation_id: str | None, *,
              check_input: bool, reason: str, outbox_delay: float,
              redriven_from: UUID | None = None) -> StartedJob:
        """In one step: :meth:`insert_if_absent`; then, unless ``check_input`` finds the
        stored input other than ``input`` (``mismatch``, nothing written), ``move``
        UPLOADED → PLANNING and, if it moved, owe the job its chain from PLANNING: the
        relay sends it ``outbox_delay`` seconds from now unless :meth:`enqueue_sent`
        clears it first."""

    def move(self, job_id: UUID, from_state: State, to_state: State, reason: str, *,
             fence: int | None = None, error_message: str | None = None,
             fields: dict[str, Any] | None = None) -> Job | None:
        """CAS ``from_state → to_state`` (and ``fence`` when given); records the transition."""

    def claim(self, job_id: UUID, state: State) -> int | None:
        """Bump the fence of a job in ``state`` and return it: the new owner's token."""

    def heartbeat(self, job_id: UUID, state: State, fence: int) -> bool: ...

    def schedule_retry(self, job_id: UUID, state: State, fence: int, delay: float) -> bool: ...

    def attempt_counts(self, job_id: UUID, stage: str) -> AttemptCounts: ...

    def open_attempt(self, job_id: UUID, state: State, task_id: str | None
                     ) -> OpenedAttempt | None:
        """In one step: claim the job in ``state`` (fence += 1), count this stage's
        attempts so far, close its RUNNING ones as worker lost and open the next with the
        stage's input. None, writing nothing, if the job is not in ``state``."""

    def advance(self, job_id: UUID, state: State, to_state: State, reason: str, *,
                fence: int, attempt: int, output: dict[str, Any],
                fields: dict[str, Any] | None = None, reused_from: UUID | None = None
                ) -> Job | None:
        """In one step: ``move`` (CAS on state and fence) and close ``attempt`` as
        SUCCESS with ``output`` (taken from job ``reused_from``'s when given). None,
        writing nothing, if the CAS misses."""

    def running_attempt(self, job_id: UUID, stage: str, task_id: str
                        ) -> tuple[int, int, float] | None: ...

    def finish_attempt(self, job_id: UUID, stage: str, attempt: int, *, success: bool,
                       output: dict[str, Any] | None = None,
                       error: str | None = None) -> bool: ...

    def close_running_attempts(self, job_id: UUID, error: str) -> list[str]: ...

    def detail(self, job_id: UUID) -> JobDetail | None: ...

    def list_jobs(self, state: State | None, limit: int,
                  after: tuple[datetime, UUID] | None) -> list[Job]: ...

    def stale_jobs(self, stale_after: float, limit: int) -> list[Job]:
        """Non-terminal started jobs with no sign of life for ``stale_after`` seconds,
        locked so that a concurrent recovery pass skips them."""

    def mark_resumed(self, job_id: UUID) -> None: ...

    def unmark_resumed(self, job_id: UUID, state: State, fence: int) -> bool:
        """Undo ``mark_resumed`` after a failed enqueue, so the next pass takes the job
        again; False (nothing written) if it left ``state`` or ``fence`` meanwhile."""

    # --- the outboxes (orchestrator.outbox) ----------------------------------------------

    def enqueue_sent(self, job_id: UUID) -> None: ...

    def claim_enqueues(self, limit: int, lease: float) -> list[PendingEnqueue]:
        """The due enqueues, locked past a concurrent relay and leased for ``lease`` s."""

    def enqueue_failed(self, job_id: UUID, error: str, delay: float) -> None: ...

    def claim_events(self, limit: int, timeout: float) -> list[TerminalEvent]:
        """The due pending events in order, each leased for as long as the tries before
        it and its own may take (``timeout`` each), its attempts counted."""

    def event_delivered(self, event_id: UUID) -> None: ...

    def event_failed(self, event_id: UUID, error: str, delay: float) -> None: ...

    def skip_events(self, limit: int, reason: str) -> list[tuple[UUID, UUID, str | None]]:
        """Mark the due pending events skipped; their (event id, job id, correlation id)."""

    def notification(self, job_id: UUID) -> Notification | None: ...


class UnitOfWork(Protocol):
    def __call__(self, *, single: bool = False) -> AbstractContextManager[JobRepository]:
        """Opens a transaction: commits when the block ends cleanly, rolls back on an
        exception. ``single``: the block runs one statement, committed by itself (no
        BEGIN/COMMIT round trips); every statement of the hot path is atomic alone."""


class JobLock(Protocol):
    def acquire(self) -> bool: ...

    def extend(self) -> bool:
        """Reset the TTL; False when the lock is no longer ours."""

    def release(self) -> bool:
        """Release if still ours; False when it had already expired or changed hands."""


class LockFactory(Protocol):
    def __call__(self, job_id: UUID) -> JobLock: ...

    def is_locked(self, job_id: UUID) -> bool: ...

    def force_release(self, job_id: UUID) -> None:
        """Delete the lock of a holder known to be dead (killed by the hard time limit)."""


class Enqueuer(Protocol):
    def __call__(self, job_id: UUID, from_state: State, correlation_id: str | None) -> None:
        """Send the chain of stage tasks from ``from_state`` to the end."""


class Canceller(Protocol):
    def __call__(self, task_ids: list[str]) -> None:
        """Stop the tasks running these ids now, wherever they run."""


class Downstream(Protocol):
    def __call__(self, spec: StageSpec, job_id: UUID, attempt: int, input: dict[str, Any],
                 correlation_id: str | None, timeout: float, allowed: int | None = None
                 ) -> dict[str, Any]:
        """POST one attempt; the output, or a TransientStageError/PermanentStageError
        whose message says ``attempt n/allowed``."""


class StageMetrics(Protocol):
    """Where the runner counts what it logs (:mod:`orchestrator.metrics`): in memory, a
    microsecond a call, never I/O on the stage's thread."""

    def attempt(self, stage: str, outcome: str, seconds: float) -> None: ...

    def retry(self, stage: str) -> None: ...

    def timeout(self, stage: str) -> None: ...

    def gave_up(self, stage: str) -> None: ...

    def lock_lost(self, stage: str) -> None: ...

    def fenced(self, stage: str) -> None: ...
