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
