"""Celery's delivery settings for the orchestrator, each with its trade-off.

Only what does not depend on the environment lives here; broker URL, queue name and the
visibility timeout come from :class:`orchestrator.settings.Settings` in
``tasks.factory.create_celery_app``. The per-stage time limits are not Celery settings at
all: the worker that runs a stage applies its own (``tasks.stage.StageRequest``), and no
message carries any. The guiding rule: a stage may be delivered twice (that is the price of
never losing one), and PostgreSQL — the job's state plus its fence — makes the second
delivery a no-op. Recovery, not redelivery, is what resumes a job after a crash.

Every name here must be a real Celery setting (Celery ignores unknown ones silently);
``tests/unit/test_celery_config.py`` checks each against Celery's own table.
"""

# Ack a stage's message only after the task returns. Trade-off: a worker that dies mid-task
# has its message redelivered, so a stage "may run twice" — which the state check, the lock
# and the fence make harmless. The alternative (ack on receipt) loses the stage on a crash.
task_acks_late = True

# A pool process that dies under a task (SIGKILL, OOM: Celery's WorkerLostError) has its
# message requeued instead of acked. Trade-off: a stage that always kills its process would
# loop forever; the attempt count in PostgreSQL caps it (MAX_LOST_ATTEMPTS) and fails the
# job. This does not cover the hard time limit: Celery reports that as TimeLimitExceeded,
# not WorkerLostError (see the next setting).
task_reject_on_worker_lost = True

# A task that raised or hit its hard time limit is acked, not requeued. Our tasks never
# fail by exception on purpose (the job's failure is recorded in PostgreSQL), so an
# exception here is a bug, not a reason to redeliver forever; recovery resumes the job if
# it was left mid-stage. A hard time limit is acked too: Celery kills the pool process,
# acks the message and calls ``Request.on_timeout`` in the worker's main process, where
# ``tasks.stage.StageRequest`` closes the attempt as timed out and, with retries left,
# sends the stage again after the backoff. With False, Celery would requeue the message as
# well, and the stage would be sent twice.
task_acks_on_failure_or_timeout = True

# Reserve one message per process at a time. Trade-off: a little throughput for fairness —
# a long stage does not sit on prefetched messages another worker could run now.
worker_prefetch_multiplier = 1

# Celery's consumer, except that under the threads pool a finished stage's ack goes within
# 50 ms instead of up to 2 s later. With late acks and the prefetch limit above, a worker
# whose reserved messages had all ended took nothing new until then (tasks/consumer.py).
worker_consumer = "tasks.consumer:Consumer"

# On losing the broker connection, let running stages finish instead of cancelling them.
# Cancelling is Celery 6's default, but that path has been reported to crash the worker's
# main process on connection loss (celery/celery#7185, #9250). Letting the stage finish is
# safe: its result goes to PostgreSQL, not to the broker, and the ack it can no longer send
# only means the message may be delivered again, which the state check and the fence make
# a no-op (tests/integration/test_outages.py restarts Redis mid-stage).
worker_cancel_long_running_tasks_on_connection_loss = False

# Retry connecting to the broker at start-up instead of exiting (Celery 6 default).
broker_connection_retry_on_startup = True

# JSON only: nothing but ids and small JSON crosses the broker, and no pickle means no
# remote code execution through a crafted message.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Job state lives in PostgreSQL, never in a Celery result backend.
task_ignore_result = True
task_store_errors_even_if_ignored = False
# With no result backend, every app's backend is Celery's stateless DisabledBackend: one
# per process, not one per thread. Celery builds a thread's own at its first task, and
# building one scans every installed package's entry points (milliseconds of CPU), so
# under the threads pool each of the WORKER_CONCURRENCY threads paid that, inside bursts.
result_backend_thread_safe = True

# Task events (what Flower and `celery events` show) cost each stage about 2 ms of the
# worker's CPU, a fifth of its whole cost, so a worker sends none until a monitor asks:
# Flower broadcasts `enable_events` when it starts and every few seconds after, so while
# Flower watches, the workers send events. "task-sent" events (one more publish per
# stage, from the sender) are never sent; Flower shows a task from its "received".
worker_send_task_events = False
task_send_sent_event = False
# Flower's STARTED comes from the "task-started" event. Celery's task_track_started only
# writes STARTED to a result backend, and there is none, so it stays off.
task_track_started = False

# We configure logging ourselves (JSON lines); Celery must not replace the root handler.
worker_hijack_root_logger = False
worker_redirect_stdouts = False

timezone = "UTC"
enable_utc = True
