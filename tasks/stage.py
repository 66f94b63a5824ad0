"""What every stage task does: run one attempt through the domain's StageRunner, then
tell Celery how the chain goes on.

    Advanced   → return: Celery sends the next task of the chain
    RetryLater → self.retry(countdown=…): the same task again later, chain kept
    Failed     → Ignore: the job is FAILED in PostgreSQL; the chain stops
    Skipped    → Ignore: a duplicate, a cancelled job or a lost lock; the chain stops

and when PostgreSQL is unavailable (refused, lost, or out of connections) at any of the
stage's statements, or Redis when the stage takes its lock: self.retry after the backoff,
the same stage again, chain kept (see :func:`postpone`).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from celery import Celery, Task
from celery.concurrency.base import BasePool
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok
from celery.worker.request import Request

from db.engine import DATABASE_UNAVAILABLE
from orchestrator.backoff import retry_delay
from orchestrator.logs import job_context, log_event
from orchestrator.runner import Advanced, RetryLater, StageRunner
from orchestrator.states import State
from tasks.chain import CANCEL_COMMAND, CeleryEnqueuer
from tasks.lock import LOCKS_UNAVAILABLE

log = logging.getLogger(__name__)


def _runner(app: Celery) -> StageRunner:
    runtime = app.runtime
    return StageRunner(runtime.settings, runtime.uow, runtime.locks, runtime.downstream,
                       timeout_errors=(SoftTimeLimitExceeded,), metrics=runtime.metrics)


def run_stage_task(task: Task, state: State, job_id: str, correlation_id: str | None
                   ) -> dict[str, Any]:
    try:
        with (task.app.runtime.inflight.track(task.request.id),
              task.app.runtime.metrics.in_flight(state.value)):
            outcome = _runner(task.app).run(UUID(job_id), state, correlation_id,
                                            task.request.id)
    except SoftTimeLimitExceeded:  # a second cancellation signal, after the runner's own
        raise Ignore() from None
    except UNAVAILABLE as exc:
        raise postpone(task, state, job_id, correlation_id, exc) from exc
    if isinstance(outcome, Advanced):
        return {"job_id": job_id, "state": outcome.to_state.value}
    if isinstance(outcome, RetryLater):
        # Celery's retry copies the delivered message's time limits: a retry carries none
        # (the worker running it applies its own), even after a message that had some.
        raise task.retry(countdown=outcome.delay, time_limit=None, soft_time_limit=None)
    raise Ignore()


#: What postpones a stage: PostgreSQL unavailable at any of its statements, or Redis when
#: it takes its lock (the only time a stage lets a Redis error out: a failed release is
#: logged and left to the lock's TTL, the heartbeat's renewals retry by themselves).
UNAVAILABLE = DATABASE_UNAVAILABLE + LOCKS_UNAVAILABLE


def postpone(task: Task, state: State, job_id: str, correlation_id: str | None,
             exc: Exception) -> Exception:
    """The stage again after the backoff, because PostgreSQL or the locks' Redis could not
    be reached.

    Without it the task would end in error and its chain with it, and the job would wait
    in its state for recovery (RECOVERY_STALE_AFTER, 5 minutes by default): for every
    stage whose connection failed in a moment of ``too many clients`` or a restart. Running
    the stage again is safe whatever it had done: every write is fenced, an attempt left
    RUNNING is closed as lost by the next claim, and a duplicate meets the lock. The
    delays are those of a transient error (RETRY_BACKOFF_BASE … RETRY_BACKOFF_MAX); no
    attempt is counted, and there is no last one: an outage that outlasts them all is
    waited out, and recovery resumes the job too once PostgreSQL is back."""
    settings = task.app.runtime.settings
    delay = retry_delay(task.request.retries + 1, base=settings.retry_backoff_base,
                        maximum=settings.retry_backoff_max, jitter=settings.retry_jitter)
    # (when the broker cannot take the retry either, Celery raises Reject here: the
    # message is dropped as it was before, and recovery resumes the job)
    retry = task.retry(countdown=delay, time_limit=None, soft_time_limit=None, throw=False)
    what = "Redis" if isinstance(exc, LOCKS_UNAVAILABLE) else "PostgreSQL"
    task.app.runtime.metrics.postponed(state.value)
    with job_context(job_id, correlation_id):
        log_event(log, "stage.postponed", logging.WARNING, stage=state.value,
                  delay_s=round(delay, 3), error=repr(exc),
                  reason=f"{what} unavailable: the stage runs again after the delay")
    return retry


class StageRequest(Request):
    """The worker-side request of a stage task (Celery's documented hook for custom
    request handling, the same in every 5.x).

    Time limits: a stage always runs under the limits of the worker that runs it, its
    task's ``stage_time_limits`` (hard, soft) from this worker's settings. Celery's
    ``Request.__init__`` would take them from the message's ``timelimit`` header, i.e. from
    whatever the sender's app had configured, and the pool applies ``time_limits`` before
    the task's own; so the header is overridden here, whoever sent the message.

    Hard time limit: Celery acks the message (``task_acks_on_failure_or_timeout``), kills
    the pool process and never retries it; ``on_timeout`` runs in the worker's main
    process, where we close the attempt as timed out and, with retries left, send the
    chain again from this stage after the backoff.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_limits = self.task.stage_time_limits

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if soft or not self.args:
            return
        task = self.task
        job_id = self.args[0]
        correlation_id = self.args[1] if len(self.args) > 1 else None
        try:
            outcome = _runner(task.app).hard_timeout(UUID(job_id), task.stage_state,
                                                     correlation_id, self.id)
            if isinstance(outcome, RetryLater):
                CeleryEnqueuer(task.app)(UUID(job_id), task.stage_state, correlation_id,
                                         countdown=outcome.delay)
        except Exception as exc:  # never take the worker's main process down with it
            with job_context(job_id, correlation_id):
                log_event(log, "stage.timeout_handling_failed", logging.ERROR,
                          stage=task.stage_state.value, error=repr(exc),
                          reason="recovery will resume the job")


class StageTask(Task):
    """The base of the stage tasks: its requests are :class:`StageRequest`."""

    Request = StageRequest
    stage_state: State
    #: (hard, soft) seconds, applied by the worker running the stage (see StageRequest).
    #: Deliberately not Celery's ``time_limit``/``soft_time_limit``: Celery would copy
    #: those into every message this app sends (``Task.apply_async``'s exec options).
    stage_time_limits: tuple[float, float]


@control_command(name=CANCEL_COMMAND, args=[("task_ids", list)],
                 signature="<task_id> [<task_id> ...]")
def orchestrator_cancel(state: Any, task_ids: list[str], **_: Any) -> dict[str, Any]:
    """Stop these stage tasks now, in whatever pool this worker runs them. Runs in the
    worker's main process (its consumer thread), on every worker that gets the broadcast.

    - threads pool: the stage's downstream call is cut where it waits, on its socket
      (:class:`tasks.inflight.InFlight`); the service sees the client go away;
    - prefork: the pool process running it gets SIGUSR1, the signal of Celery's soft time
      limit, so the task unwinds and its process lives on;
    - not started yet: flagged revoked, so it never runs here.
    """
    ids = set(task_ids or [])
    worker_state.revoked.update(ids)
    pool = state.consumer.pool
    cut = state.consumer.app.runtime.inflight.abort(ids)
    signalled = 0
    # Pools of processes (prefork sets its terminate_job on the instance when it starts)
    if getattr(pool.terminate_job, "__func__", None) is not BasePool.terminate_job:
        for request in list(worker_state.active_requests):
            if request.id in ids:
                request.terminate(pool, signal="SIGUSR1")
                signalled += 1
    if cut or signalled:
        log_event(log, "stage.cancel_received", tasks=sorted(ids), calls_cut=cut,
                  processes_signalled=signalled)
    return ok(f"cut {cut} call(s), signalled {signalled} process(es)")
