"""The worker's effective Celery configuration is what celeryconfig.py and the README say.

Celery ignores a setting it does not know, silently: a misspelt name leaves the default in
force while its comment claims otherwise. So every name in celeryconfig.py is checked
against Celery's own table of settings, and every delivery setting the comments and the
README rely on is read back from the app the worker runs (and from its stage tasks, which
is where Celery's worker reads most of them).
"""

from __future__ import annotations

import inspect
import threading
import uuid

import celery.backends.base
import pytest
from celery import Celery
from celery.app.defaults import DEFAULTS

import celeryconfig
from orchestrator.settings import Settings
from orchestrator.stages import STAGE_STATES
from orchestrator.states import State
from tasks.chain import create_sender_app, stage_chain, stage_queue, task_name
from tasks.factory import create_celery_app, visibility_timeout

# Built, never connected: nothing listens on these ports.
ENV = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
       "REDIS_URL": "redis://127.0.0.1:9/0", "CELERY_QUEUE": "config-test"}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.from_env(ENV)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    """The app `orchestrator worker` and `celery -A tasks worker` run."""
    return create_celery_app(settings)


def configured_names() -> list[str]:
    return [name for name, value in vars(celeryconfig).items()
            if name.islower() and not name.startswith("_") and not inspect.ismodule(value)]


#: Settings Celery reads with ``conf.get`` outside its table, each with where it does.
READ_OUTSIDE_THE_TABLE = {"result_backend_thread_safe": celery.backends.base.Backend}


def test_every_name_in_celeryconfig_is_a_celery_setting():
    names = configured_names()
    assert "task_acks_late" in names  # the module was read
    unknown = [name for name in names
               if name not in DEFAULTS and name not in READ_OUTSIDE_THE_TABLE]
    assert unknown == [], f"not Celery settings (Celery would ignore them): {unknown}"
    for name, reader in READ_OUTSIDE_THE_TABLE.items():
        assert f"'{name}'" in inspect.getsource(reader), (name, reader)


def test_every_name_in_celeryconfig_is_in_force(app: Celery):
    for name in configured_names():
        assert app.conf[name] == getattr(celeryconfig, name), name


def test_delivery_settings_the_docs_rely_on(app: Celery, settings: Settings):
    conf = app.conf
    # Ack after the task, requeue when the pool process dies, ack a failure or a hard
    # time limit (StageRequest.on_timeout retries it), one message reserved per process
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_acks_on_failure_or_timeout is True
    assert conf.worker_prefetch_multiplier == 1
    # Running stages are not cancelled when the broker connection drops
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert conf.broker_connection_retry_on_startup is True
    # JSON only, in and out
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    # No result backend use: job state lives in PostgreSQL
    assert conf.task_ignore_result is True
    assert conf.task_store_errors_even_if_ignored is False
    # Our JSON logging stays in place
    assert conf.worker_hijack_root_logger is False
    assert conf.worker_redirect_stdouts is False
    # Redis gives an unacked message to another worker only after the visibility timeout
    assert conf.broker_transport_options["visibility_timeout"] == visibility_timeout(settings)
    assert visibility_timeout(settings) >= 3600
    # A worker takes later stages first (Redis polls its queues in sorted order)
    assert conf.broker_transport_options["queue_order_strategy"] == "sorted"
    # The environment's part
    assert conf.broker_url == settings.broker_url
    assert conf.task_default_queue == "config-test"
    # No global time limit: each stage's limits are applied by the worker running it
    assert conf.task_time_limit is None and conf.task_soft_time_limit is None


@pytest.mark.parametrize("state", STAGE_STATES)
def test_each_stage_task_has_the_delivery_semantics(app: Celery, settings: Settings,
                                                    state: State):
    # Celery's worker reads these from the task (celery/worker/request.py), which takes
    # them from the configuration when the task is bound
    task = app.tasks[task_name(state)]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.acks_on_failure_or_timeout is True
    assert task.ignore_result is True
    assert task.max_retries is None
    # The limits travel with the worker's task, never as Celery's own (which Celery would
    # copy into every message the app sends)
    spec = settings.stage(state)
    assert task.stage_time_limits == (spec.timeout + settings.hard_timeout_grace, spec.timeout)
    assert task.time_limit is None and task.soft_time_limit is None


def test_apps_in_one_process_keep_their_own_stage_limits():
    # Given several apps built in one process (tests do; Celery's shared tasks would build
    # each app's tasks with another app's options), each with its own COSTING_TIMEOUT
    apps = {timeout: create_celery_app(Settings.from_env({**ENV, "COSTING_TIMEOUT": timeout}))
            for timeout in ("7", "8", "9", "11", "12", "13")}
    # Then each app's task has its own app's limits
    grace = Settings.from_env(ENV).hard_timeout_grace
    for timeout, app in apps.items():
        task = app.tasks[task_name(State.COSTING)]
        assert task.app is app
        assert task.stage_time_limits == (float(timeout) + grace, float(timeout)), timeout


QUEUES = {state: f"config-test.{state.value.lower()}" for state in STAGE_STATES}


def test_the_stage_tasks_are_the_stage_table(app: Celery):
    # One task per stage of the table, registered in one loop; no other stage task
    stage_tasks = sorted(n for n in app.tasks if n.startswith("orchestrator.stage."))
    assert stage_tasks == sorted(task_name(s) for s in STAGE_STATES)
    assert [app.tasks[task_name(s)].stage_state for s in STAGE_STATES] == list(STAGE_STATES)


def test_a_worker_consumes_the_four_stage_queues_by_default(app: Celery):
    # What `celery -A tasks worker` (no -Q) consumes: the stage queues, each on an
    # exchange of its own, so a message published to one reaches no other
    queues = app.amqp.queues
    assert sorted(queues) == sorted(QUEUES.values())
    for name, queue in queues.items():
        assert queue.exchange.name == name and queue.routing_key == name


@pytest.mark.parametrize("sender", ["worker", "api"])
def test_each_stage_is_routed_to_its_own_queue(app: Celery, settings: Settings, sender: str):
    # Given the worker's app, or the API's light sender
    celery = app if sender == "worker" else create_sender_app(settings)
    for state, queue in QUEUES.items():
        # Then a stage task sent by name (a retry, a hard-timeout re-enqueue) is routed to
        # its stage's queue
        assert celery.amqp.router.route({}, task_name(state))["queue"].name == queue
    # And every signature of a chain carries its own queue
    steps = stage_chain(celery, uuid.uuid4(), State.PLANNING, "c").tasks
    assert [(s.task, s.options["queue"]) for s in steps] == [
        (task_name(state), queue) for state, queue in QUEUES.items()]


def test_the_api_sender_is_no_worker_app(settings: Settings):
    # The API's sender has the broker and the routing, and nothing of a worker's: no
    # stage task, no runtime (engine, lock, HTTP client), no recovery step
    sender = create_sender_app(settings)
    assert sender.conf.broker_url == settings.broker_url
    assert not [n for n in sender.tasks if n.startswith("orchestrator.")]
    assert not hasattr(sender, "runtime")
    assert list(sender.conf.accept_content) == ["json"]


@pytest.mark.parametrize("base", ["orchestrator", "config-test", "a.b-c_9", "Z"])
def test_the_stage_queues_sort_as_the_pipeline_runs_backwards(base: str) -> None:
    # What "sorted" polling relies on to give later stages priority
    names = [stage_queue(base, state) for state in STAGE_STATES]
    assert sorted(names) == names[::-1]


@pytest.mark.parametrize("sender", ["worker", "api"])
def test_a_stage_message_asks_for_no_result(settings: Settings, sender: str):
    # Given a chain sent by a worker's app or by the API's sender (which has no task
    # registered, so Celery's send_task publishes it by name), on an in-memory broker
    celery = create_celery_app(settings) if sender == "worker" else create_sender_app(settings)
    celery.conf.broker_url = "memory://"
    stage_chain(celery, uuid.uuid4(), State.PLANNING, "c").apply_async()
    with celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(stage_queue(settings.celery_queue, State.PLANNING))
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    # Then the message says its result is not kept: the worker's trace neither stores
    # STARTED nor a result anywhere
    assert message.headers["ignore_result"] is True


def test_a_worker_process_has_one_result_backend_for_all_its_threads(settings: Settings):
    # Celery builds a thread's own backend at its first task unless the backend is
    # thread-safe; building one scans every package's entry points. No result backend is
    # configured (DisabledBackend, stateless), so every thread shares the process's one.
    app = create_celery_app(settings)
    seen = []
    for _ in range(2):  # two threads, one after the other
        thread = threading.Thread(target=lambda: seen.append(app.backend))
        thread.start()
        thread.join()
    assert seen[0] is seen[1] is app.backend
