"""``create_celery_app(settings)``: the worker's Celery app with its configuration, one
task per stage of the stage table, the routing to the stage queues, the recovery and
outbox relay steps and the logging hooks.

Only workers (and the operator's ``orchestrator recover``) build it; the API sends with
the light app of :func:`tasks.chain.create_sender_app`. A stage's time limits are
given to its task as ``stage_time_limits``, which only a worker running it reads
(:class:`tasks.stage.StageRequest`); never as Celery's ``time_limit``/``soft_time_limit``,
which Celery copies into the header of every message the task's app sends, so a sender's
settings would govern another process's stages."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import Celery, signals

from orchestrator.logs import bind_job, configure_logging, job_context, log_event, unbind_job
from orchestrator.settings import Settings
from tasks.chain import configure_routing, task_name
from tasks.metrics import Flusher, MetricsStep, start_process_flusher
from tasks.recovery import RecoveryStep
from tasks.relay import RelayStep
from tasks.runtime import Runtime
from tasks.stage import StageTask, run_stage_task
from tasks.transport import transport_for

log = logging.getLogger(__name__)


def run_stage(self: StageTask, job_id: str, correlation_id: str | None = None
              ) -> dict[str, Any]:
    """The body of every stage task: its stage is the task's ``stage_state``; the flow is
    in :mod:`tasks.stage`."""
    return run_stage_task(self, self.stage_state, job_id, correlation_id)


def visibility_timeout(settings: Settings) -> float:
    """How long Redis keeps a delivered, unacked message before giving it to another
    worker: longer than one attempt can take (timeout + hard-limit grace) plus the longest
    retry countdown held as an ETA, with a wide margin; never under an hour."""
    longest = max(s.timeout for s in settings.stages) + settings.hard_timeout_grace
    return max(3600.0, 2 * (longest + settings.retry_backoff_max))


def create_celery_app(settings: Settings) -> Celery:
    settings.require_services()
    app = Celery("orchestrator", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport=transport_for(settings.broker_url),
        broker_transport_options={
            "visibility_timeout": visibility_timeout(settings),
            # Redis: a worker polls its stage queues in sorted order, and the stage queues
            # sort as the pipeline runs backwards ({q}.costing, .enriching, .parsing,
            # .planning), so a later stage's message is taken before an earlier one's:
            # under a burst, jobs already in flight finish before new ones start.
            "queue_order_strategy": "sorted",
            # Redis: no message of ours carries a priority, so each stage queue is one
            # list. Kombu's default steps (0, 3, 6, 9) would make every poll a BRPOP on
            # four lists a queue, sixteen for a worker of all four stages, packed and
            # watched again after every message. A priority-0 message lives on the
            # queue's own list under either setting, so the wire format is unchanged.
            "priority_steps": [0],
        },
        worker_concurrency=settings.worker_concurrency,
    )
    configure_routing(app, settings)
    app.runtime = Runtime(settings)
    for spec in settings.stages:  # the stage table, in order
        app.task(
            run_stage, bind=True, name=task_name(spec.state), base=StageTask,
            stage_state=spec.state,
            stage_time_limits=(spec.timeout + settings.hard_timeout_grace, spec.timeout),
            # Retries are counted in PostgreSQL (attempt rows), not in the message, so a
            # redelivered or resumed stage keeps its count; Celery must not cap them too.
            max_retries=None,
            # This app's task only. A shared task (Celery's default) is also built into
            # every app created later in the process, with THIS call's options, before
            # that app's own: a second app (tests, several apps in one process) would get
            # the first one's limits.
            shared=False,
        )
    app.steps["worker"].add(RecoveryStep)
    app.steps["worker"].add(RelayStep)
    app.steps["worker"].add(MetricsStep)
    _connect_signals(app, settings)
    return app


def _connect_signals(app: Celery, settings: Settings) -> None:
    def setup_logging(**_: Any) -> None:
        configure_logging(settings.log_level)

    child: list[Flusher] = []

    def process_init(**_: Any) -> None:
        app.runtime.after_fork()
        gc.freeze()  # what a prefork child inherited (see ready)
        child.append(start_process_flusher(app, app.runtime.metrics_dir))

    def process_shutdown(**_: Any) -> None:
        while child:  # a pool child's last counts
            child.pop().stop()

    def ready(sender: Any = None, **_: Any) -> None:
        # Everything made until now (the imports, Celery, the app, its pools: ~130 k
        # objects) lives as long as the process: out of the cyclic collector's sight, a
        # full collection walks only what came later. Under a 600-job burst each process
        # made one full collection, 80-210 ms of CPU with all its stages stopped; 0-30 ms
        # since (docs/benchmarks.md, cut 22; the gc module's documented use of freeze).
        gc.freeze()
        log_event(log, "worker.ready", queue=settings.celery_queue,
                  hostname=getattr(sender, "hostname", None),
                  gc_frozen=gc.get_freeze_count())

    bound: dict[str, tuple[Any, Any]] = {}

    def prerun(task_id: str = "", task: Any = None, args: Any = (), **_: Any) -> None:
        # Celery's own lines about a running stage task (succeeded, retry, raised) carry
        # its job, like ours.
        if isinstance(task, StageTask) and args:
            bound[task_id] = bind_job(args[0], args[1] if len(args) > 1 else None)

    def postrun(task_id: str = "", **_: Any) -> None:
        tokens = bound.pop(task_id, None)
        if tokens is not None:
            unbind_job(tokens)

    def internal_error(sender: Any = None, args: Any = (), exception: Any = None,
                       **_: Any) -> None:
        # An error in Celery after a stage's body returned, its job already unbound: the
        # chain's next message not sent (the broker unreachable), say. Celery's own line
        # about it carries no job; this one does, and says what comes next.
        if isinstance(sender, StageTask) and args:
            with job_context(args[0], args[1] if len(args) > 1 else None):
                log_event(log, "stage.internal_error", logging.ERROR,
                          stage=sender.stage_state.value, error=repr(exception),
                          reason="Celery failed after the stage ran (e.g. sending its next "
                                 "stage): recovery resumes the job")

    uid = f"orchestrator-{id(app)}"
    signals.task_prerun.connect(prerun, weak=False, dispatch_uid=f"{uid}-prerun")
    signals.task_postrun.connect(postrun, weak=False, dispatch_uid=f"{uid}-postrun")
    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid=f"{uid}-log")
    signals.worker_process_init.connect(process_init, weak=False, dispatch_uid=f"{uid}-fork")
    signals.worker_process_shutdown.connect(process_shutdown, weak=False,
                                            dispatch_uid=f"{uid}-exit")
    signals.worker_ready.connect(ready, weak=False, dispatch_uid=f"{uid}-ready")
    signals.task_internal_error.connect(internal_error, weak=False,
                                        dispatch_uid=f"{uid}-internal-error")
