"""The use cases: start a job, run one stage attempt, fail a job, recover stalled jobs.

Each takes its collaborators (a unit of work, a lock factory, an enqueuer, a downstream
caller) as arguments, so the same code runs under Flask, under Celery and in tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.errors import InputMismatch, JobIdInUse, JobNotFound, JobTerminal, NotFailed
from orchestrator.logs import job_context, log_event
from orchestrator.models import CANCELLED, AttemptStatus, Job
from orchestrator.ports import Canceller, Enqueuer, LockFactory, UnitOfWork
from orchestrator.stages import STAGE_STATES
from orchestrator.states import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartResult:
    job: Job
    started: bool  # True: this call moved it to PLANNING and enqueued; False: already running


def start_job(uow: UnitOfWork, enqueue: Enqueuer, job_id: UUID, input: dict[str, Any] | None,
              correlation_id: str | None, *, outbox_after: float = 2.0,
              redriven_from: UUID | None = None) -> StartResult:
    """Create the job if new, move it UPLOADED → PLANNING and enqueue its chain, once.

    A repeated start with an ``input`` other than the stored one raises InputMismatch (and
    changes nothing); one with no input (None) never does.

    Concurrent starts of one job are settled by PostgreSQL: the insert is ``ON CONFLICT DO
    NOTHING`` and the move a compare-and-set, so exactly one caller wins and enqueues.

    A 202 is a promise: the move commits with an outbox row owing the job its chain
    (``JobRepository.start``). The chain is sent right after the commit and the row cleared; if the
    send fails (the broker is down) or the process dies first, the row stays and a
    worker's relay sends it ``outbox_after`` seconds on, as soon as the broker answers
    (:func:`orchestrator.outbox.send_enqueues`), with no wait for recovery.
    """
    with uow(single=True) as jobs:  # one statement, one transaction, one round trip
        started = jobs.start(job_id, input or {}, correlation_id,
                             check_input=input is not None, reason="started",
                             outbox_delay=outbox_after, redriven_from=redriven_from)
    if started.mismatch:
        raise InputMismatch(str(job_id))  # nothing written
    job = started.job
    if job is None:  # pragma: no cover - the row was inserted or existed a moment ago
        raise JobNotFound(str(job_id))
    with job_context(job_id, job.correlation_id):
        if started.created:
            log_event(log, "job.created", to_state=State.UPLOADED.value)
        if not started.moved:
            if job.current_state.is_terminal:
                raise JobTerminal(str(job_id), job.current_state.value)
            log_event(log, "job.start_ignored", reason="already running",
                      state=job.current_state.value)
            return StartResult(job, started=False)
        log_event(log, "job.transition", from_state=State.UPLOADED.value,
                  to_state=State.PLANNING.value, reason="started")
        log_event(log, "outbox.enqueued", stage=State.PLANNING.value)
        try:
            enqueue(job_id, State.PLANNING, job.correlation_id)
        except Exception as exc:  # the broker is down: the relay sends it once it is back
            log_event(log, "job.enqueue_failed", logging.ERROR, error=repr(exc),
                      stage=State.PLANNING.value,
                      outcome=f"left in the outbox; a worker's relay sends it from "
                              f"{outbox_after:g} s on, once the broker answers")
        else:
            log_event(log, "job.enqueued", stage=State.PLANNING.value)
            _clear_enqueue(uow, job_id)
    return StartResult(job, started=True)


def _clear_enqueue(uow: UnitOfWork, job_id: UUID) -> None:
    """The chain went: clear its outbox row. If PostgreSQL fails us here, the relay finds
    the row, sees the job claimed (its fence moved) and drops it; before the claim it
    sends the chain again, a duplicate the stage's claim makes harmless."""
    try:
        with uow(single=True) as jobs:
            jobs.enqueue_sent(job_id)
    except Exception as exc:
        log_event(log, "outbox.clear_failed", logging.WARNING, error=repr(exc))


@dataclass(frozen=True)
class RedriveResult:
    job: Job  # the new job
    started: bool  # True: created and started by this call; False: a repeated call
    resumes_at: State  # the first stage whose service the new job calls


def redrive_job(uow: UnitOfWork, enqueue: Enqueuer, job_id: UUID, new_id: UUID,
                **start_options: Any) -> RedriveResult:
    """Run a FAILED job again as a new job ``new_id``, with its input and correlation id.

    The new job walks every state from UPLOADED; each stage that succeeded in the old job
    reuses that stored output instead of calling its service (the stage runner sees the
    job's ``redriven_from``). Repeating the call with the same ``new_id`` changes nothing
    and gives the same job; an id already used by another job is refused.
    """
    with uow() as jobs:
        old = jobs.detail(job_id)
        existing = jobs.get(new_id)
    if old is None:
        raise JobNotFound(str(job_id))
    succeeded = {s.stage_name for s in old.stages if s.status is AttemptStatus.SUCCESS}
    resumes_at = next((s for s in STAGE_STATES if s.value not in succeeded), State.COMPLETED)
    if existing is not None and existing.redriven_from != job_id:
        raise JobIdInUse(str(new_id), f"is another job, not a redrive of {job_id}")
    if existing is not None:  # a repeated call (start_job inserts and moves at once)
        return RedriveResult(existing, started=False, resumes_at=resumes_at)
    if old.job.current_state is not State.FAILED:
        raise NotFailed(str(job_id), old.job.current_state.value)
    with job_context(new_id, old.job.correlation_id):
        log_event(log, "job.redrive", redriven_from=str(job_id), resumes_at=resumes_at.value)
    result = start_job(uow, enqueue, new_id, old.job.input, old.job.correlation_id,
                       redriven_from=job_id, **start_options)
    if result.job.redriven_from != job_id:  # pragma: no cover - a start raced for the id
        raise JobIdInUse(str(new_id), f"is another job, not a redrive of {job_id}")
    return RedriveResult(result.job, started=result.started, resumes_at=resumes_at)


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
