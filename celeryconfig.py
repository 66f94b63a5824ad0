"""Celery's delivery settings for the orchestrator, each with its trade-off.

Only what does not depend on the environment lives here; broker URL, queue name and the
per-stage time limits come from :class:`orchestrator.settings.Settings` in
``tasks.app.create_celery_app``. The guiding rule: a stage may be delivered twice (that is
the price of never losing one), and PostgreSQL — the job's state plus its fence — makes the
second delivery a no-op. Recovery, not redelivery, is what resumes a job after a crash.
"""

# Ack a stage's message only after the task returns. Trade-off: a worker that dies mid-task
# has its message redelivered, so a stage "may run twice" — which the state check, the lock
# and the fence make harmless. The alternative (ack on receipt) loses the stage on a crash.
task_acks_late = True

# A child process killed (SIGKILL, OOM, hard time limit) requeues its message instead of
# acking it as failed. Trade-off: a stage that always kills its worker would loop forever;
# the attempt count in PostgreSQL caps it (MAX_LOST_ATTEMPTS) and fails the job.
task_reject_on_worker_lost = True

# A failed or timed-out task is acked: our tasks never fail by exception on purpose (the
# job's failure is recorded in PostgreSQL), so an exception here is a bug, not a reason to
# redeliver forever; recovery resumes the job if it was left mid-stage.
task_acks_on_failure = True
task_acks_on_timeout = True

# Reserve one message per process at a time. Trade-off: a little throughput for fairness —
# a long stage does not sit on prefetched messages another worker could run now.
worker_prefetch_multiplier = 1

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

# Let Flower and `celery events` show task progress.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# We configure logging ourselves (JSON lines); Celery must not replace the root handler.
worker_hijack_root_logger = False
worker_redirect_stdouts = False

timezone = "UTC"
enable_utc = True
