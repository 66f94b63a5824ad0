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

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from orchestrator.runner import Advanced, RetryLater, StageRunner
from orchestrator.states import State


def run_stage_task(task: Task, state: State, job_id: str, correlation_id: str | None
                   ) -> dict[str, Any]:
    runtime = task.app.runtime
    runner = StageRunner(runtime.settings, runtime.uow, runtime.locks, runtime.downstream,
                         timeout_errors=(SoftTimeLimitExceeded,))
    outcome = runner.run(UUID(job_id), state, correlation_id)
    if isinstance(outcome, Advanced):
        return {"job_id": job_id, "state": outcome.to_state.value}
    if isinstance(outcome, RetryLater):
        raise task.retry(countdown=outcome.delay)
    raise Ignore()
