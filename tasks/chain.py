"""The one place the chain of stage tasks is built and routed, and the enqueuer the API
uses.

    planning.si(job) | parsing.si(job) | enriching.si(job) | costing.si(job)

Signatures are by task name and immutable (``si``): only the job id and correlation id
cross the broker; each stage reads its input from PostgreSQL (the previous stage's stored
output). A resumed job gets the tail of the chain from its current state.

Each stage has its own queue, ``{CELERY_QUEUE}.{stage}`` (:func:`stage_queue`), so a
worker can consume only some stages (``orchestrator worker --stages planning``). Every
signature of the chain carries its queue, and every app (the worker's and the API's
light sender) routes the stage tasks the same way (:func:`configure_routing`), so a
stage sent by a worker (the next one of a chain, a retry, recovery, a hard-timeout
re-enqueue) or by the API lands on the same queue.

This module is what the API may import of ``tasks``: it builds no worker app.
"""

from __future__ import annotations

from uuid import UUID

from celery import Celery, chain
from celery.canvas import Signature
from kombu import Exchange, Queue

from orchestrator.settings import Settings
from orchestrator.stages import STAGE_STATES, stages_from
from orchestrator.states import State
from tasks.transport import transport_for

#: The control command that stops stage tasks where they run
#: (:func:`tasks.stage.orchestrator_cancel`, sent by :meth:`CeleryEnqueuer.cancel`).
CANCEL_COMMAND = "orchestrator_cancel"


def task_name(state: State) -> str:
    return f"orchestrator.stage.{state.value.lower()}"


def stage_queue(base: str, state: State) -> str:
    """The queue of a stage: ``orchestrator.planning`` for PLANNING on ``orchestrator``."""
    return f"{base}.{state.value.lower()}"


def stage_queues(base: str, states: tuple[State, ...] = STAGE_STATES) -> list[Queue]:
    """The queues of ``states``, each bound to a direct exchange of its own name (as Celery
    creates a missing queue), so a message published to one reaches no other."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (stage_queue(base, s) for s in states)]


def configure_routing(app: Celery, settings: Settings) -> None:
    """Declare the four stage queues (what a worker consumes unless told ``-Q``) and
    route each stage task to its own; the same for a worker app and a sender."""
    base = settings.celery_queue
    app.conf.update(
        task_default_queue=base,
        task_queues=stage_queues(base),
        task_routes={task_name(s): {"queue": stage_queue(base, s)} for s in STAGE_STATES},
    )


def stage_chain(app: Celery, job_id: UUID, from_state: State, correlation_id: str | None
                ) -> Signature:
    """The chain from ``from_state`` to the end, each signature by name on its queue (the
    app needs no task registered: a sender publishes by name)."""
    base = app.conf.task_default_queue
    # ignore_result: a sender with no task registered (the API's) publishes by name, and
    # Celery's send_task would mark the message as wanting its result stored
    return chain(*(app.signature(task_name(s), (str(job_id), correlation_id), immutable=True,
                                 queue=stage_queue(base, s), ignore_result=True)
                   for s in stages_from(from_state)), app=app)


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
        """Stop the tasks where they run, in any pool: every worker gets the
        ``orchestrator_cancel`` control command (:func:`tasks.stage.orchestrator_cancel`),
        which cuts the stage's downstream call (threads pool) or sends its process SIGUSR1
        (prefork), and flags the tasks revoked. Their job being FAILED already, they write
        nothing."""
        self.app.control.broadcast(CANCEL_COMMAND, arguments={"task_ids": task_ids})


def create_sender_app(settings: Settings) -> Celery:
    """A Celery app that only sends: the broker, the serializer and the routing, no tasks,
    no runtime (no PostgreSQL engine, no Redis lock, no HTTP client). It publishes the
    stage tasks by name; the worker that runs one applies its own time limits (see
    :mod:`tasks.factory`), so its messages carry none."""
    if not settings.broker_url:
        settings.require_services()  # names the missing variable
    app = Celery("orchestrator-sender", set_as_current=False)
    app.config_from_object("celeryconfig")  # the worker's serializer, events, clock
    app.conf.update(broker_url=settings.broker_url,
                    broker_transport=transport_for(settings.broker_url))
    configure_routing(app, settings)
    return app


def check_broker(app: Celery, timeout: float = 2.0) -> None:
    """Raise unless the broker answers within about ``timeout`` seconds: a fresh
    connection (not the pool's), one try, no retry (kombu's Redis channel PINGs on
    connect; py-amqp does the AMQP handshake). For ``/readyz``."""
    with app.connection_for_write(connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                     interval_max=0, timeout=timeout)


def make_enqueuer(settings: Settings) -> CeleryEnqueuer:
    """The enqueuer of processes that only send (the API): built where the process is
    composed, over :func:`create_sender_app`; it connects on first send."""
    return CeleryEnqueuer(create_sender_app(settings))
