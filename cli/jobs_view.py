"""Text views of jobs for ``orchestrator jobs list|show``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID

from api.serialize import iso, job_detail, job_state
from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.errors import ConfigError
from orchestrator.models import JobDetail
from orchestrator.settings import Settings
from orchestrator.states import State


def _uow(settings: Settings) -> PostgresUnitOfWork:
    if not settings.database_url:
        raise ConfigError("DATABASE_URL", "is not set")
    return PostgresUnitOfWork(make_engine(settings.database_url, pool_size=1))


def list_jobs(settings: Settings, state: str | None, limit: int, as_json: bool) -> str:
    try:
        wanted = State(state.upper()) if state else None
    except ValueError:
        raise ConfigError("--state", f"must be one of {', '.join(State)}") from None
    with _uow(settings)() as jobs:
        found = jobs.list_jobs(wanted, limit, None)
    if as_json:
        return json.dumps([job_state(j) for j in found], indent=2)
    rows = [("JOB ID", "STATE", "RETRIES", "CREATED", "ERROR")]
    rows += [(str(j.job_id), j.current_state.value, str(j.retry_count), iso(j.created_at) or "",
              (j.error_message or "")[:60]) for j in found]
    return _table(rows) if found else "no jobs"


def show_job(settings: Settings, job_id: UUID, as_json: bool) -> str | None:
    with _uow(settings)() as jobs:
        detail = jobs.detail(job_id)
    if detail is None:
        return None
    if as_json:
        return json.dumps(job_detail(detail), indent=2)
    return _describe(detail)


def _describe(detail: JobDetail) -> str:
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
    if job.error_message:
        lines.append(f"error      {job.error_message}")
    lines += ["", "transitions"]
    lines += ["  " + line for line in _table(
        [("AT", "FROM", "TO", "REASON")]
        + [(iso(t.at) or "", t.from_state.value, t.to_state.value, t.reason or "")
           for t in detail.transitions]).splitlines()]
    lines += ["", "stage attempts"]
    lines += ["  " + line for line in _table(
        [("STAGE", "ATTEMPT", "STATUS", "STARTED", "DURATION", "ERROR")]
        + [(a.stage_name, str(a.attempt_number), a.status.value, iso(a.started_at) or "",
            f"{a.duration_ms} ms" if a.duration_ms is not None else "-",
            (a.error_message or "")[:80]) for a in detail.stages]).splitlines()]
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
