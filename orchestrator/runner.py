"""Running one attempt of one stage of one job, safely.

The flow, every step guarded::

    take the Redis lock ── busy ─> Skipped (another worker runs it, or the job has moved
                                  on: a duplicate or a late delivery; the log says which)
    claim in PostgreSQL (fence += 1) and open attempt n (closing any RUNNING one as
    "worker lost"), in one statement ── job not in this stage ─> Skipped (a duplicate or
    a late delivery: nothing written); heartbeat starts
    POST to the stage's service, bounded by what is left of the stage timeout
    success   ─> CAS(state, fence): attempt SUCCESS, job → next state      ─> Advanced
    transient ─> CAS: attempt FAILED; retries left? retry_count += 1       ─> RetryLater
                                      none left?   job → FAILED            ─> Failed
    permanent ─> CAS: attempt FAILED, job → FAILED                         ─> Failed
    any CAS matching no row (cancelled, or fenced out after losing the lock) ─> Skipped

The lock keeps two workers from running a stage at once; the fence makes sure a worker
that lost its lock (paused past the TTL, cut off from Redis) cannot write anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.backoff import retry_delay
from orchestrator.deferred import DeferredThread, start_at
from orchestrator.errors import (
    PermanentStageError,
    StageCancelled,
    StageError,
    StageTimeout,
    TransientStageError,
)
from orchestrator.logs import current_correlation_id, job_context, log_event
from orchestrator.metrics import NO_METRICS, attempt_outcome
from orchestrator.models import Job
from orchestrator.outcomes import attempt_label, timeout_error
from orchestrator.ports import Downstream, JobLock, LockFactory, StageMetrics, UnitOfWork
from orchestrator.settings import Settings
from orchestrator.stages import StageSpec
from orchestrator.states import State, next_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Advanced:
    to_state: State


@dataclass(frozen=True)
class RetryLater:
    delay: float
    attempt: int


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Skipped:
    reason: str


Outcome = Advanced | RetryLater | Failed | Skipped


@dataclass(frozen=True)
class JobRef:
    """What a stage run needs of its job: its id and the correlation id the services get
    (a :class:`Job` has both too)."""

    job_id: UUID
    correlation_id: str | None


@dataclass
class StageRunner:
    """Runs stage attempts with the collaborators of one process."""

    settings: Settings
    uow: UnitOfWork
    locks: LockFactory
    downstream: Downstream
    #: Exceptions meaning "this attempt's time is up" (Celery's SoftTimeLimitExceeded).
    timeout_errors: tuple[type[BaseException], ...] = ()
    #: Where each logged stage event is counted too (orchestrator.metrics).
    metrics: StageMetrics = NO_METRICS

    def run(self, job_id: UUID, state: State, correlation_id: str | None,
            task_id: str | None = None) -> Outcome:
        with job_context(job_id, correlation_id):
            # The lock first, then one statement that claims the job only if it is in
            # this stage: a duplicate or late delivery finds out there, or at the busy
            # lock, without a read of its own.
            lock = self.locks(job_id)
            if not lock.acquire():
                # Busy: is it this stage that runs elsewhere, or has the job moved on
                # (a late duplicate meeting the next stage's lock)?
                moved_on = self._moved_on(job_id, state)
                if moved_on is not None:
                    return moved_on
                log_event(log, "lock.busy", stage=state.value)
                return Skipped("lock held by another worker")
            log_event(log, "lock.acquired", stage=state.value)
            try:
                return self._run_locked(job_id, state, lock, task_id)
            except self.timeout_errors as exc:
                # The time limit or a cancellation landed outside the downstream call (a
                # database write was rolled back): nothing half-written; recovery closes
                # the attempt if the job still needs it.
                cancelled = self._cancellation(job_id)
                if cancelled is not None:
                    log_event(log, "stage.cancelled", logging.WARNING, stage=state.value,
                              cancelled_by=cancelled[0], error=cancelled[1])
                    return Skipped("cancelled")
                log_event(log, "stage.interrupted", logging.WARNING, stage=state.value,
                          exc_info=exc)
                return Skipped("interrupted")
            finally:
                self._release(lock, state)

    def _release(self, lock: JobLock, state: State) -> None:
        try:
            released = lock.release()
        except self.timeout_errors:  # interrupted while releasing: the TTL will free it
            log_event(log, "lock.release_interrupted", logging.WARNING, stage=state.value)
            return
        except Exception as exc:
            # Redis unreachable: what the stage did is written and stands (the job may
            # have moved on, and its next stage must be sent); the lock expires by its TTL.
            log_event(log, "lock.release_failed", logging.WARNING, stage=state.value,
                      error=repr(exc), reason="the lock expires by its TTL")
            return
        if released:
            log_event(log, "lock.released", stage=state.value)
        else:
            log_event(log, "lock.lost", logging.WARNING, stage=state.value,
                      error="lock expired or taken over before release")
            self.metrics.lock_lost(state.value)

    def _skip(self, reason: str) -> Skipped:
        log_event(log, "stage.skipped", reason=reason)
        return Skipped(reason)

    def _moved_on(self, job_id: UUID, state: State) -> Skipped | None:
        """Skipped, saying why, if the job is not (or no longer) in ``state``."""
        with self.uow() as jobs:
            job = jobs.get(job_id)
        if job is None:
            return self._skip("job not found")
        if job.current_state is not state:
            return self._skip(f"job is {job.current_state.value}, not {state.value}")
        return None

    def _not_in_stage(self, job_id: UUID, state: State) -> Skipped:
        return self._moved_on(job_id, state) or self._skip("job moved on before the claim")

    def _run_locked(self, job_id: UUID, state: State, lock: JobLock, task_id: str | None
                    ) -> Outcome:
        spec = self.settings.stage(state)
        with self.uow(single=True) as jobs:
            opened = jobs.open_attempt(job_id, state, task_id)
        if opened is None:
            return self._not_in_stage(job_id, state)
        if opened.before.lost >= self.settings.max_lost_attempts:
            # (if this process dies here, the attempt just opened is lost too, and the
            # next claim gives up the same way)
            attempt, allowed = opened.attempt, spec.max_attempts + opened.before.lost
            message = (f"{attempt_label(spec, attempt, allowed)}: gave up after "
                       f"{opened.before.lost} attempts ended with their worker lost")
            with self.uow() as jobs:
                return self._give_up(JobRef(job_id, opened.correlation_id), state,
                                     opened.fence, attempt, message, jobs)
        job = JobRef(job_id, opened.correlation_id)
        fence, counts, attempt = opened.fence, opened.before, opened.attempt
        allowed = spec.max_attempts + counts.lost
        stage_input = opened.input
        log_event(log, "stage.started", stage=state.value, attempt=attempt, fence=fence)
        started = time.monotonic()
        if opened.reusable is not None:
            # A redrive: the job it redrives stored this stage's output; not called again.
            log_event(log, "stage.reused", stage=state.value, attempt=attempt,
                      reused_from=str(opened.redriven_from))
            return self._advance(job, spec, fence, attempt, opened.reusable, started,
                                 reused_from=opened.redriven_from)
        heartbeat = Heartbeat(self, job.job_id, state, fence, lock,
                              overrun_after=spec.timeout + self.settings.hard_timeout_grace)
        with heartbeat:
            try:
                output = self._call(spec, job, attempt, allowed, stage_input, started)
            except StageCancelled as exc:
                # The operator's fail closed the job and this attempt: nothing to write.
                who, why = self._cancellation(job_id) or ("unknown", str(exc))
                log_event(log, "stage.cancelled", logging.WARNING, stage=state.value,
                          attempt=attempt, duration_ms=_ms(started), cancelled_by=who,
                          error=why)
                self.metrics.attempt(state.value, "cancelled", time.monotonic() - started)
                return Skipped("cancelled")
            except StageError as exc:
                return self._attempt_failed(job, spec, fence, attempt, counts.failed, exc,
                                            _ms(started))
        if heartbeat.lost.is_set():
            return self._skip("lock lost during the stage; result discarded")
        return self._advance(job, spec, fence, attempt, output, started)

    def _call(self, spec: StageSpec, job: JobRef | Job, attempt: int, allowed: int,
              stage_input: dict[str, Any], started: float) -> dict[str, Any]:
        try:
            return self.downstream(spec, job.job_id, attempt, stage_input, job.correlation_id,
                                   spec.timeout - (time.monotonic() - started), allowed)
        except self.timeout_errors as exc:
            # One signal for two causes under prefork: Celery's soft time limit, and the
            # operator's cancel (tasks.stage.orchestrator_cancel). A cancelled job has left
            # this stage already (fail_job commits before it cancels); a timed-out one has
            # not.
            if self._cancellation(job.job_id) is not None:
                raise StageCancelled(f"{attempt_label(spec, attempt, allowed)}: cancelled "
                                     "while calling the service", stage=spec.name) from exc
            raise timeout_error(spec, attempt, allowed=allowed) from exc

    def _cancellation(self, job_id: UUID) -> tuple[str, str | None] | None:
        """(who, message) when the job was failed while this stage ran: the reason of its
        move to FAILED (e.g. "failed by operator via the API") and its error message.
        None when it was not, or when PostgreSQL cannot say (then it is taken for what
        the signal alone says)."""
        try:
            with self.uow() as jobs:
                detail = jobs.detail(job_id)
        except Exception as exc:  # only the log line's wording depends on it
            log_event(log, "stage.cancellation_unknown", logging.WARNING, error=repr(exc))
            return None
        if detail is None or detail.job.current_state is not State.FAILED:
            return None
        who = next((t.reason for t in reversed(detail.transitions)
                    if t.to_state is State.FAILED), None)
        return who or "unknown", detail.job.error_message

    def _advance(self, job: JobRef | Job, spec: StageSpec, fence: int, attempt: int,
                 output: dict[str, Any], started: float, reused_from: UUID | None = None
                 ) -> Outcome:
        target = next_state(spec.state)
        fields: dict[str, Any] = {}
        required = spec.definition.required_field
        if required:
            fields[required] = str(output[required])
        with self.uow(single=True) as jobs:
            moved = jobs.advance(job.job_id, spec.state, target, f"{spec.name} succeeded",
                                 fence=fence, attempt=attempt, output=output, fields=fields,
                                 reused_from=reused_from)
            if moved is None:
                return self._fenced(spec, attempt)
        log_event(log, "stage.succeeded", stage=spec.name, attempt=attempt,
                  duration_ms=_ms(started))
        self.metrics.attempt(spec.name, "reused" if reused_from else "success",
                             time.monotonic() - started)
        log_event(log, "job.transition", from_state=spec.name, to_state=target.value,
                  stage=spec.name, attempt=attempt)
        return Advanced(target)

    def hard_timeout(self, job_id: UUID, state: State, correlation_id: str | None,
                     task_id: str) -> Outcome:
        """Celery's hard time limit killed the process running ``task_id``: close its
        attempt as timed out and retry it like any transient error. Runs in the worker's
        main process; the attempt's own fence guards every write, and the dead holder's
        lock is deleted only once that write succeeded."""
        spec = self.settings.stage(state)
        with job_context(job_id, correlation_id):
            with self.uow() as jobs:
                job = jobs.get(job_id)
                running = jobs.running_attempt(job_id, state.value, task_id)
                counts = jobs.attempt_counts(job_id, state.value)
            if job is None or running is None:
                return self._skip("no open attempt for the timed-out task")
            attempt, fence, elapsed = running
            # The killed attempt is still RUNNING, so counted among the lost ones here.
            error = timeout_error(spec, attempt, " (hard time limit: worker process killed)",
                                  allowed=spec.max_attempts + counts.lost - 1)
            outcome = self._attempt_failed(job, spec, fence, attempt, counts.failed, error,
                                           int(elapsed * 1000))
            if not isinstance(outcome, Skipped):
                self.locks.force_release(job_id)
                log_event(log, "lock.broken", stage=state.value,
                          reason="its holder was killed by the hard time limit")
            return outcome

    def _attempt_failed(self, job: JobRef | Job, spec: StageSpec, fence: int, attempt: int,
                        failed_before: int, exc: StageError, duration_ms: int) -> Outcome:
        error = str(exc)
        failures = failed_before + 1
        if isinstance(exc, StageTimeout):
            log_event(log, "stage.timeout", logging.WARNING, stage=spec.name, attempt=attempt,
                      duration_ms=duration_ms, error=error)
            self.metrics.timeout(spec.name)
        log_event(log, "stage.failed", logging.WARNING, stage=spec.name, attempt=attempt,
                  duration_ms=duration_ms, error=error, status=exc.status,
                  transient=isinstance(exc, TransientStageError))
        self.metrics.attempt(spec.name, attempt_outcome(exc), duration_ms / 1000)
        if isinstance(exc, TransientStageError) and failures < spec.max_attempts:
            delay = retry_delay(failures, base=self.settings.retry_backoff_base,
                                maximum=self.settings.retry_backoff_max,
                                jitter=self.settings.retry_jitter, retry_after=exc.retry_after)
            with self.uow() as jobs:
                if not jobs.schedule_retry(job.job_id, spec.state, fence, delay):
                    return self._fenced(spec, attempt)
                jobs.finish_attempt(job.job_id, spec.name, attempt, success=False, error=error)
            log_event(log, "stage.retry_scheduled", stage=spec.name, attempt=attempt,
                      delay_s=round(delay, 3), retry=failures, error=error)
            self.metrics.retry(spec.name)
            return RetryLater(delay, attempt)
        if isinstance(exc, PermanentStageError):
            message = error
        else:
            message = f"{error} (retries exhausted after {failures} attempts)"
        with self.uow() as jobs:
            return self._give_up(job, spec.state, fence, attempt, message, jobs)

    def _give_up(self, job: JobRef | Job, state: State, fence: int, attempt: int, message: str,
                 jobs: Any) -> Outcome:
        if jobs.move(job.job_id, state, State.FAILED, "stage failed", fence=fence,
                     error_message=message) is None:
            return self._fenced(self.settings.stage(state), attempt)
        jobs.finish_attempt(job.job_id, state.value, attempt, success=False, error=message)
        log_event(log, "stage.gave_up", logging.ERROR, stage=state.value, attempt=attempt,
                  error=message)
        self.metrics.gave_up(state.value)
        log_event(log, "job.transition", from_state=state.value, to_state=State.FAILED.value,
                  stage=state.value, attempt=attempt, error=message)
        return Failed(message)

    def _fenced(self, spec: StageSpec, attempt: int) -> Skipped:
        log_event(log, "stage.fenced_out", logging.WARNING, stage=spec.name, attempt=attempt,
                  reason="job changed state or owner while the stage ran; nothing written")
        self.metrics.fenced(spec.name)
        return Skipped("fenced out")


class Heartbeat:
    """While a stage runs: extend its lock and record a sign of life every TTL/3.

    If the lock is gone (expired while the process was paused, or taken over), ``lost`` is
    set and nothing more is renewed; the stage's own writes are fenced anyway.

    A stage still running ``overrun_after`` seconds after it started (its timeout plus
    ``HARD_TIMEOUT_GRACE``) is stuck somewhere its deadline cannot reach: the watchdog
    cuts only the downstream call, and no thread can be killed. From then on it is not
    renewed either: ``lost`` is set and the lock left to expire, so recovery takes the job
    over as from a dead worker and the stuck stage's writes are fenced out. Under prefork,
    Celery's hard time limit kills the process at that same moment.
    """

    def __init__(self, runner: StageRunner, job_id: UUID, state: State, fence: int,
                 lock: JobLock, *, overrun_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.runner, self.job_id, self.state, self.fence, self.lock = (
            runner, job_id, state, fence, lock)
        self.overrun_after, self.clock = overrun_after, clock
        self.started = clock()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._interval = runner.settings.lock_ttl / 3
        # Its thread starts when the first beat is due: most stages end before that and
        # never get one (orchestrator.deferred).
        self._thread = DeferredThread(self._beat, name=f"heartbeat-{job_id}")
        self._context: tuple[str, str | None] = (str(job_id), None)

    def __enter__(self) -> Heartbeat:
        self._context = (str(self.job_id), current_correlation_id())
        start_at(time.monotonic() + self._interval, self._thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.cancel(self._stop.set)

    def _beat(self) -> None:
        with job_context(*self._context):
            while not self._stop.is_set() and self._beat_once():
                if self._stop.wait(self._interval):
                    return

    def _beat_once(self) -> bool:
        elapsed = self.clock() - self.started
        if self.overrun_after is not None and elapsed > self.overrun_after:
            self.lost.set()
            log_event(log, "stage.overran", logging.ERROR, stage=self.state.value,
                      duration_ms=int(elapsed * 1000),
                      error=f"still running {elapsed:.0f}s after it started, past its "
                            f"timeout and grace ({self.overrun_after:g}s): its lock is "
                            "left to expire, recovery takes the job over and this "
                            "stage's writes are fenced out")
            return False
        try:
            if not self.lock.extend():
                self.lost.set()
                log_event(log, "lock.lost", logging.WARNING, stage=self.state.value,
                          error="lock expired or taken over while the stage ran")
                self.runner.metrics.lock_lost(self.state.value)
                return False
            with self.runner.uow() as jobs:
                alive = jobs.heartbeat(self.job_id, self.state, self.fence)
            if not alive:
                self.lost.set()
                log_event(log, "stage.fenced_out", logging.WARNING, stage=self.state.value,
                          reason="job changed state or owner while the stage ran")
                self.runner.metrics.fenced(self.state.value)
                return False
            log_event(log, "lock.extended", logging.DEBUG, stage=self.state.value)
        except Exception as exc:  # Redis or PostgreSQL away for a moment: try next beat
            log_event(log, "lock.extend_failed", logging.WARNING, stage=self.state.value,
                      error=repr(exc))
        return True


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
