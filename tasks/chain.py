"""The one place the chain of stage tasks is built, and the enqueue function the API uses.

    planning.si(job) | parsing.si(job) | enriching.si(job) | costing.si(job)

Signatures are immutable (``si``): only the job id and correlation id cross the broker;
each stage reads its input from PostgreSQL (the previous stage's stored output). A
resumed job gets the tail of the chain from its current state.
"""

from __future__ import annotations

from uuid import UUID

from celery import Celery, chain
from celery.canvas import Signature

from orchestrator.settings import Settings
from orchestrator.stages import stages_from
from orchestrator.states import State


def task_name(state: State) -> str:
    return f"orchestrator.stage.{state.value.lower()}"


def stage_chain(app: Celery, job_id: UUID, from_state: State, correlation_id: str | None
                ) -> Signature:
    return chain(*(app.tasks[task_name(s)].si(str(job_id), correlation_id)
                   for s in stages_from(from_state)))


class CeleryEnqueuer:
    """:class:`orchestrator.ports.Enqueuer` on Celery: sends the chain from a state on;
    :meth:`cancel` is the :class:`orchestrator.ports.Canceller`."""

    def __init__(self, app: Celery):
        self.app = app

    def __call__(self, job_id: UUID, from_state: State, correlation_id: str | None,
                 countdown: float | None = None) -> None:
        if not stages_from(from_state):
            return
        stage_chain(self.app, job_id, from_state, correlation_id).apply_async(
            countdown=countdown)

    def cancel(self, task_ids: list[str]) -> None:
        """Revoke the tasks and interrupt them where they run: SIGUSR1 is the signal of
        Celery's soft time limit, so the task gets SoftTimeLimitExceeded (and, its job
        being FAILED already, writes nothing) while the pool process lives on."""
        self.app.control.revoke(task_ids, terminate=True, signal="SIGUSR1")


def make_enqueuer(settings: Settings) -> CeleryEnqueuer:
    """The enqueue function for processes that only send (the API): a Celery app of the
    same configuration, built now, connecting on first send. Its messages carry no time
    limits (see :mod:`tasks.factory`): the worker that runs a stage applies its own."""
    from tasks.factory import create_celery_app

    return CeleryEnqueuer(create_celery_app(settings))
