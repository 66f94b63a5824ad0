"""JSON log lines: one object a line with the standard fields, the job context applied,
tracebacks carried in a field."""

from __future__ import annotations

import io
import json
import logging

from orchestrator.logs import configure_logging, job_context, log_event


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_has_the_standard_fields_and_the_job_context():
    stream = io.StringIO()
    configure_logging("INFO", stream)
    with job_context("job-1", "corr-1"):
        log_event(logging.getLogger("t"), "stage.started", stage="PARSING", attempt=2)
    log_event(logging.getLogger("t"), "worker.ready")
    first, second = lines(stream)
    assert first["event"] == "stage.started" and first["level"] == "INFO"
    assert (first["job_id"], first["correlation_id"]) == ("job-1", "corr-1")
    assert (first["stage"], first["attempt"]) == ("PARSING", 2)
    assert first["timestamp"].endswith("+00:00")
    assert second["job_id"] is None and second["correlation_id"] is None


def test_a_traceback_travels_in_one_line():
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        log_event(logging.getLogger("t"), "api.error", logging.ERROR, exc_info=exc)
    (line,) = lines(stream)
    assert "ValueError: boom" in line["exc_info"]


def test_other_libraries_lines_are_json_too():
    stream = io.StringIO()
    configure_logging("INFO", stream)
    logging.getLogger("celery.worker").warning("plain %s", "text")
    (line,) = lines(stream)
    assert line["event"] == "log" and line["message"] == "plain text"


def _records() -> list[logging.LogRecord]:
    """Records of every shape a line may take: extras of odd types, a traceback, a dict
    message, a %-formatted one, non-ASCII, an underscored attribute (left out)."""
    import datetime
    import uuid

    made = []

    def record(msg: object, args: tuple = (), exc_info: object = None, **extra: object
               ) -> None:
        item = logging.LogRecord("orchestrator.runner", logging.WARNING, __file__, 1, msg,
                                 args, exc_info)  # type: ignore[arg-type]
        item.__dict__.update(extra)
        made.append(item)

    record("stage.succeeded", event="stage.succeeded", job_id="j", correlation_id=None,
           stage="PARSING", attempt=2, duration_ms=12)
    record("plain %s and %d", ("text", 3))
    record({"a": 1, "nested": {"b": [1, 2]}}, event="dict")
    record("ünïcode ✓", event="x", value=uuid.UUID(int=7),
           when=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC), raw=b"\x00b",
           state=logging, _private="hidden")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record("api.error", exc_info=sys.exc_info(), event="api.error")
    return made


def test_the_fast_formatter_writes_what_python_json_logger_writes():
    # Given python-json-logger's own JsonFormatter and ours, configured alike
    from pythonjsonlogger.json import JsonFormatter

    from orchestrator.logs import JsonLines

    options = dict(
        fmt="%(levelname)s %(name)s %(process)d %(message)s %(event)s %(job_id)s "
            "%(correlation_id)s",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp=True)
    theirs, ours = JsonFormatter(**options), JsonLines(**options)  # type: ignore[arg-type]
    # Then every record comes out the same, byte for byte
    for record in _records():
        expected = theirs.format(record)
        record.__dict__.pop("message", None)
        record.exc_text = None
        assert ours.format(record) == expected


def test_celerys_per_task_lines_show_only_at_debug():
    # Celery's "Task … received" and "Task … succeeded" repeat our own lines: hidden at
    # INFO, shown at DEBUG; its warnings and errors always shown
    stream = io.StringIO()
    configure_logging("INFO", stream)
    trace = logging.getLogger("celery.app.trace")
    trace.info("Task %s succeeded", "t")
    trace.error("Task %s raised", "t")
    configure_logging("DEBUG", stream)
    logging.getLogger("celery.worker.strategy").info("Task %s received", "t")
    assert [line["message"] for line in lines(stream)] == ["Task t raised", "Task t received"]


def test_lines_written_from_many_threads_stay_whole():
    # The handler formats outside its lock and writes under it: every line still arrives
    # whole, one JSON object a line, whatever the threads' interleaving
    import threading

    stream = io.StringIO()
    configure_logging("INFO", stream)
    log = logging.getLogger("t")

    def write(n: int) -> None:
        with job_context(f"job-{n}", None):
            for i in range(200):
                log_event(log, "stage.started", attempt=i, padding="x" * (n * 50))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = lines(stream)
    assert len(written) == 8 * 200
    assert all(len(line["padding"]) == int(line["job_id"][4:]) * 50 for line in written)
