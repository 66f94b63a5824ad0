"""Domain objects to the JSON shapes of the contract."""

from __future__ import annotations

from typing import Any

from orchestrator.models import Job, JobDetail, Notification, iso


def job_state(job: Job) -> dict[str, Any]:
    return {
        "job_id": str(job.job_id),
        "current_state": job.current_state.value,
        "previous_state": job.previous_state.value if job.previous_state else None,
        "retry_count": job.retry_count,
        "error_message": job.error_message,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "plan_reference": job.plan_reference,
        "result_reference": job.result_reference,
    }


def job_detail(detail: JobDetail) -> dict[str, Any]:
    return {
        **job_state(detail.job),
        "transitions": [
            {"from_state": t.from_state.value, "to_state": t.to_state.value, "at": iso(t.at),
             "reason": t.reason}
            for t in detail.transitions],
        "stages": [
            {"stage_name": a.stage_name, "attempt_number": a.attempt_number,
             "status": a.status.value, "started_at": iso(a.started_at),
             "completed_at": iso(a.completed_at), "duration_ms": a.duration_ms,
             "error_message": a.error_message,
             "reused_from": str(a.reused_from) if a.reused_from else None}
            for a in detail.stages],
        "result": detail.result,
        "redriven_from": str(detail.job.redriven_from) if detail.job.redriven_from else None,
        "redrives": [str(r) for r in detail.redrives],
        "notification": notification(detail.notification),
    }


def notification(n: Notification | None) -> dict[str, Any] | None:
    """The terminal event's delivery, or None before the job ends."""
    if n is None:
        return None
    return {"event_id": str(n.event_id), "status": n.status, "attempts": n.attempts,
            "last_error": n.last_error, "delivered_at": iso(n.delivered_at),
            "next_attempt_at": iso(n.next_attempt_at)}
