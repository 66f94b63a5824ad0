"""What every stage task does: run one attempt through the domain's StageRunner, then
tell Celery how the chain goes on.

    Advanced   → return: Celery sends the next task of the chain
    RetryLater → self.retry(countdown=…): the same task again later, chain kept
    Failed     → Ignore: the job is FAILED in PostgreSQL; the chain stops
    Skipped    → Ignore: a duplicate, a cancelled job or a lost lock; the chain stops
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from celery import Celery, Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded

from orchestrator.runner import Advanced, RetryLater, StageRunner
from orchestrator.states import State
from tasks.chain import CeleryEnqueuer


def _runner(app: Celery) -> StageRunner:
    runtime = app.runtime
    return StageRunner(runtime.settings, runtime.uow, runtime.locks, runtime.downstream,
                       timeout_errors=(SoftTimeLimitExceeded,))


def run_stage_task(task: Task, state: State, job_id: str, correlation_id: str | None
                   ) -> dict[str, Any]:
    outcome = _runner(task.app).run(UUID(job_id), state, correlation_id, task.request.id)
    if isinstance(outcome, Advanced):
        return {"job_id": job_id, "state": outcome.to_state.value}
    if isinstance(outcome, RetryLater):
        raise task.retry(countdown=outcome.delay)
    raise Ignore()


class StageTask(Task):
    """The base of the stage tasks: handles Celery's hard time limit, which kills the pool
    process and which Celery itself never retries. ``on_failure`` then runs in the worker's
    main process; the attempt is closed as timed out and, with retries left, the chain is
    sent again from this stage after the backoff."""

    stage_state: State

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        job_id = args[0]
        correlation_id = args[1] if len(args) > 1 else kwargs.get("correlation_id")
        outcome = _runner(self.app).hard_timeout(UUID(job_id), self.stage_state,
                                                 correlation_id, task_id)
        if isinstance(outcome, RetryLater):
            CeleryEnqueuer(self.app)(UUID(job_id), self.stage_state, correlation_id,
                                     countdown=outcome.delay)
