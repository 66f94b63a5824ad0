"""JSON logs: one object a line, one event name per thing that happens.

Every line has ``timestamp``, ``level``, ``event``, ``job_id`` and ``correlation_id``
(null outside a job); the job fields come from a context set with :func:`job_context`,
so a use case only names what is particular to its event. Secrets never reach a log:
settings are logged only through their redacted form.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


@contextmanager
def job_context(job_id: object, correlation_id: str | None) -> Iterator[None]:
    """Tag every log line inside the block with the job and its correlation id."""
    tokens = bind_job(job_id, correlation_id)
    try:
        yield
    finally:
        unbind_job(tokens)


def bind_job(job_id: object, correlation_id: str | None) -> tuple[Any, Any]:
    """Like :func:`job_context`, for hooks that start and end in two calls (Celery's
    task_prerun/task_postrun); pass the result to :func:`unbind_job`."""
    return (_job_id.set(str(job_id) if job_id else None), _correlation_id.set(correlation_id))


def unbind_job(tokens: tuple[Any, Any]) -> None:
    _job_id.reset(tokens[0])
    _correlation_id.reset(tokens[1])


def current_correlation_id() -> str | None:
    return _correlation_id.get()


class _ContextFilter(logging.Filter):
    """Fills the standard fields on every record, including other libraries' lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "event"):
            record.event = "log"
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = _correlation_id.get()
        return True


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Send every logger's records, as JSON lines, to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(
        "%(levelname)s %(name)s %(process)d %(message)s %(event)s %(job_id)s %(correlation_id)s",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp=True,
    ))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # warnings become JSON lines too
    root.setLevel(level)
    for noisy in ("urllib3", "werkzeug", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              exc_info: BaseException | None = None, **fields: Any) -> None:
    """Log one event: the message is the event name, the fields are the data (and the
    traceback of ``exc_info``, when given, in the line's ``exc_info`` field)."""
    logger.log(level, event, exc_info=exc_info, extra={"event": event, **fields})
