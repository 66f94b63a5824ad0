"""The use cases: start a job, run one stage attempt, fail a job, recover stalled jobs.

Each takes its collaborators (a unit of work, a lock factory, an enqueuer, a downstream
caller) as arguments, so the same code runs under Flask, under Celery and in tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.errors import InputMismatch, JobNotFound, JobTerminal
from orchestrator.logs import job_context, log_event
from orchestrator.models import CANCELLED, Job
from orchestrator.ports import Canceller, Enqueuer, LockFactory, UnitOfWork
from orchestrator.states import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartResult:
    job: Job
    started: bool  # True: this call moved it to PLANNING and enqueued; False: already running


def start_job(uow: UnitOfWork, enqueue: Enqueuer, job_id: UUID, input: dict[str, Any] | None,
              correlation_id: str | None) -> StartResult:
    """Create the job if new, move it UPLOADED → PLANNING and enqueue its chain, once.

    A repeated start with an ``input`` other than the stored one raises InputMismatch (and
    changes nothing); one with no input (None) never does.

    Concurrent starts of one job are settled by PostgreSQL: the insert is ``ON CONFLICT DO
    NOTHING`` and the move a compare-and-set, so exactly one caller wins and enqueues. If
    the process dies between the commit and the enqueue, recovery finds the job (in
    PLANNING with no live lock and no progress) and enqueues it.
    """
    with uow() as jobs:
        created = jobs.insert_if_absent(job_id, input or {}, correlation_id)
        if not created and input is not None:
            existing = jobs.get(job_id)
            if existing is not None and existing.input != input:
                raise InputMismatch(str(job_id))  # rolls back: nothing moved
        moved = jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        job = moved or jobs.get(job_id)
    if job is None:  # pragma: no cover - the row was inserted or existed a moment ago
        raise JobNotFound(str(job_id))
    with job_context(job_id, job.correlation_id):
        if created:
            log_event(log, "job.created", to_state=State.UPLOADED.value)
        if moved is None:
            if job.current_state.is_terminal:
                raise JobTerminal(str(job_id), job.current_state.value)
            log_event(log, "job.start_ignored", reason="already running",
                      state=job.current_state.value)
            return StartResult(job, started=False)
        log_event(log, "job.transition", from_state=State.UPLOADED.value,
                  to_state=State.PLANNING.value, reason="started")
        try:
            enqueue(job_id, State.PLANNING, job.correlation_id)
        except Exception as exc:  # the broker is down: recovery will enqueue it later
            log_event(log, "job.enqueue_failed", logging.ERROR, error=repr(exc))
        else:
            log_event(log, "job.enqueued", stage=State.PLANNING.value)
    return StartResult(job, started=True)


def fail_job(uow: UnitOfWork, job_id: UUID, message: str, *,
             cancel: Canceller | None = None, reason: str = "failed by operator") -> Job:
    """Move a non-terminal job to FAILED now, whatever stage is in flight.

    The row is locked for the move, and the move changes the state a stage's writes are
    conditioned on, so a stage finishing afterwards finds zero rows and writes nothing. Its
    open attempt is closed here as cancelled, and its task is stopped through ``cancel``
    rather than left running to its timeout.
    """
    with uow() as jobs:
        job = jobs.get(job_id, for_update=True)
        if job is None:
            raise JobNotFound(str(job_id))
        if job.current_state.is_terminal:
            raise JobTerminal(str(job_id), job.current_state.value)
        failed = jobs.move(job_id, job.current_state, State.FAILED, reason,
                           error_message=message)
        cancelled = jobs.close_running_attempts(job_id, CANCELLED)
    assert failed is not None  # the row was locked: nobody could move it meanwhile
    with job_context(job_id, job.correlation_id):
        log_event(log, "job.transition", from_state=job.current_state.value,
                  to_state=State.FAILED.value, reason=reason, error=message)
        if cancelled and cancel is not None:
            try:
                cancel(cancelled)
            except Exception as exc:  # the stage is fenced out anyway; it just runs longer
                log_event(log, "job.cancel_failed", logging.WARNING, error=repr(exc))
            else:
                log_event(log, "job.cancel_sent", tasks=cancelled)
    return failed


def recover(uow: UnitOfWork, locks: LockFactory, enqueue: Enqueuer, *, stale_after: float,
            limit: int = 100) -> list[UUID]:
    """One recovery pass: resume every started, non-terminal job that shows no sign of life;
    return the ids of the jobs it enqueued.

    A job qualifies when its last progress (a transition, a claim, a heartbeat, a scheduled
    retry's due time, a previous resume) is older than ``stale_after`` seconds and nobody
    holds its lock. Candidates are selected ``FOR UPDATE SKIP LOCKED`` and marked resumed in
    the same transaction, so concurrent passes resume each job once. Then each is enqueued;
    one whose enqueue fails (the broker is down) is logged and un-marked, so the next pass
    takes it again rather than ``stale_after`` later, and the rest of the batch still goes.
    Re-running a stage is safe: the stage task claims the job with a new fence first.
    """
    candidates: list[Job] = []
    with uow() as jobs:
        for job in jobs.stale_jobs(stale_after, limit):
            if locks.is_locked(job.job_id):
                continue
            jobs.mark_resumed(job.job_id)
            candidates.append(job)
    resumed: list[Job] = []
    stranded: list[Job] = []
    for job in candidates:
        if _enqueue_resumed(enqueue, job):
            resumed.append(job)
        else:
            stranded.append(job)
    if stranded:
        _unmark(uow, stranded)
    return [job.job_id for job in resumed]


def _enqueue_resumed(enqueue: Enqueuer, job: Job) -> bool:
    with job_context(job.job_id, job.correlation_id):
        try:
            enqueue(job.job_id, job.current_state, job.correlation_id)
        except Exception as exc:  # the broker is down: un-marked, so the next pass retries
            log_event(log, "recovery.enqueue_failed", logging.ERROR,
                      state=job.current_state.value, stage=job.current_state.value,
                      error=repr(exc))
            return False
        log_event(log, "recovery.resume", state=job.current_state.value,
                  stage=job.current_state.value)
        return True


def _unmark(uow: UnitOfWork, stranded: list[Job]) -> None:
    """Give the jobs whose enqueue failed back to the next pass, unless one was claimed or
    moved meanwhile (it shows life then). If PostgreSQL fails us here too, they stay marked
    and become stale again ``stale_after`` later, as any resumed job that stalls does."""
    try:
        with uow() as jobs:
            kept = [job for job in stranded
                    if not jobs.unmark_resumed(job.job_id, job.current_state, job.fence)]
    except Exception as exc:
        for job in stranded:
            with job_context(job.job_id, job.correlation_id):
                log_event(log, "recovery.unmark_failed", logging.ERROR,
                          stage=job.current_state.value, error=repr(exc))
        return
    for job in kept:
        with job_context(job.job_id, job.correlation_id):
            log_event(log, "recovery.unmark_skipped", stage=job.current_state.value,
                      reason="claimed or moved since it was marked")
