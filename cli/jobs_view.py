"""Text views of jobs for ``orchestrator jobs list|show``, and an operator's ``jobs fail``."""

from __future__ import annotations

import getpass
import json
import socket
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from api.serialize import iso, job_detail, job_state
from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.errors import ConfigError
from orchestrator.models import JobDetail
from orchestrator.settings import Settings
from orchestrator.states import State

#: Long errors wrap at this width, whole, in ``jobs show``.
WIDTH = 100


def _uow(settings: Settings) -> PostgresUnitOfWork:
    if not settings.database_url:
        raise ConfigError("DATABASE_URL", "is not set")
    return PostgresUnitOfWork(make_engine(settings.database_url, pool_size=1))


def list_jobs(settings: Settings, state: State | None, limit: int, as_json: bool,
              now: datetime | None = None) -> str:
    with _uow(settings)() as jobs:
        found = jobs.list_jobs(state, limit, None)
    if as_json:
        return json.dumps([job_state(j) for j in found], indent=2)
    now = now or datetime.now(UTC)
    rows = [("JOB ID", "STATE", "RETRIES", "AGE", "ERROR")]
    rows += [(str(j.job_id), j.current_state.value, str(j.retry_count),
              age(now, j.created_at),
              textwrap.shorten(j.error_message or "", 60, placeholder=" …"))
             for j in found]
    return _table(rows) if found else "no jobs"


def age(now: datetime, then: datetime) -> str:
    """How long ago, in its largest whole unit: 42s, 5m, 3h, 12d."""
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def show_job(settings: Settings, job_id: UUID, as_json: bool) -> str | None:
    """The job's detail, and its Redis lock (:mod:`cli.unlock`): ``--json`` is the API's
    detail with a ``lock`` object added."""
    from cli.unlock import lock_summary

    uow = _uow(settings)
    try:
        with uow() as jobs:
            detail = jobs.detail(job_id)
        if detail is None:
            return None
        with uow.engine.connect() as connection:
            lock_line, lock_json = lock_summary(settings, connection, job_id)
    finally:
        uow.engine.dispose()
    if as_json:
        return json.dumps({**job_detail(detail), "lock": lock_json}, indent=2)
    return _describe(detail, lock_line)


def operator() -> str:
    """Who runs this command: ``user@host``, recorded with what an operator does."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _describe(detail: JobDetail, lock: str | None = None) -> str:
    job = detail.job
    lines = [
        f"job        {job.job_id}",
        f"state      {job.current_state.value}"
        + (f" (from {job.previous_state.value})" if job.previous_state else ""),
        f"retries    {job.retry_count}",
        f"created    {iso(job.created_at)}",
        f"started    {iso(job.started_at) or '-'}",
        f"completed  {iso(job.completed_at) or '-'}",
        f"plan       {job.plan_reference or '-'}",
        f"result     {job.result_reference or '-'}",
    ]
    if job.redriven_from:
        lines.append(f"redrive of {job.redriven_from}")
    if detail.redrives:
        lines.append(f"redrives   {', '.join(str(r) for r in detail.redrives)}")
    if detail.notification is not None:
        lines.append(f"notified   {_notified(detail)}")
    if lock is not None:
        lines += textwrap.wrap(lock, WIDTH, initial_indent="lock       ",
                               subsequent_indent="           ", break_long_words=False,
                               break_on_hyphens=False)
    if job.error_message:
        lines += textwrap.wrap(job.error_message, WIDTH, initial_indent="error      ",
                               subsequent_indent="           ", break_long_words=False,
                               break_on_hyphens=False)
    lines += ["", "transitions"]
    lines += ["  " + line for line in _table(
        [("AT", "FROM", "TO", "REASON")]
        + [(iso(t.at) or "", t.from_state.value, t.to_state.value, t.reason or "")
           for t in detail.transitions]).splitlines()]
    lines += ["", "stage attempts"]
    table = _table(
        [("STAGE", "ATTEMPT", "STATUS", "STARTED", "DURATION")]
        + [(a.stage_name, str(a.attempt_number), a.status.value, iso(a.started_at) or "",
            f"{a.duration_ms} ms" if a.duration_ms is not None else "-")
           for a in detail.stages]).splitlines()
    lines.append("  " + table[0])
    for attempt, row in zip(detail.stages, table[1:], strict=True):
        lines.append("  " + row
                     + (f"  reused from {attempt.reused_from}" if attempt.reused_from else ""))
        if attempt.error_message:  # whole, wrapped under its attempt
            lines += textwrap.wrap(attempt.error_message, WIDTH, initial_indent="    error: ",
                                   subsequent_indent="           ", break_long_words=False,
                                   break_on_hyphens=False)
    return "\n".join(lines)


def _notified(detail: JobDetail) -> str:
    """The terminal event's delivery in one line: ``delivered 2026-… (2 attempts)``,
    ``pending (3 attempts; last: HTTP 500; next 2026-…)`` or ``skipped (…)``."""
    n = detail.notification
    assert n is not None
    tries = f"{n.attempts} attempt{'s' if n.attempts != 1 else ''}"
    if n.status == "delivered":
        return f"delivered {iso(n.delivered_at)} ({tries}), event {n.event_id}"
    if n.status == "pending":
        parts = [tries] + ([f"last: {textwrap.shorten(n.last_error, 80)}"]
                           if n.last_error else [])
        if n.next_attempt_at is not None:
            parts.append(f"next {iso(n.next_attempt_at)}")
        return f"pending ({'; '.join(parts)}), event {n.event_id}"
    return f"{n.status} ({n.last_error or tries}), event {n.event_id}"


def fail(settings: Settings, job_id: UUID, message: str) -> str:
    """Fail a job as the API's fail does (its stage in flight is cancelled), recording
    the operator's user and host as who did it; the new state's summary line."""
    from orchestrator.service import fail_job
    from tasks.chain import make_enqueuer

    who = f"failed by operator via the CLI ({operator()})"
    job = fail_job(_uow(settings), job_id, message, cancel=make_enqueuer(settings).cancel,
                   reason=who)
    return f"job {job.job_id}: {job.previous_state.value if job.previous_state else '?'} → " \
           f"{job.current_state.value} ({who})"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
