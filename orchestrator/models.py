"""Plain domain objects: what the repository returns and the API serialises."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from orchestrator.states import State


class AttemptStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


#: The error text of attempts closed by someone other than the worker that ran them.
WORKER_LOST = "worker lost"
CANCELLED = "cancelled"
#: The longest message an operator's fail may carry (the API and the CLI alike).
MAX_ERROR_MESSAGE = 4096


@dataclass(frozen=True)
class Job:
    job_id: UUID
    current_state: State
    previous_state: State | None
    retry_count: int
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    plan_reference: str | None
    result_reference: str | None
    correlation_id: str | None = None
    fence: int = 0
    input: dict[str, Any] = field(default_factory=dict)
    #: The FAILED job this one redrives, if any.
    redriven_from: UUID | None = None


@dataclass(frozen=True)
class Transition:
    from_state: State
    to_state: State
    at: datetime
    reason: str | None


@dataclass(frozen=True)
class StageAttempt:
    stage_name: str
    attempt_number: int
    status: AttemptStatus
    started_at: datetime
    completed_at: datetime | None
    duration_ms: int | None
    error_message: str | None
    #: The job whose stored output this SUCCESS reused instead of calling the service.
    reused_from: UUID | None = None


@dataclass(frozen=True)
class AttemptCounts:
    """The attempts of one stage of one job so far, by how they ended."""

    total: int = 0
    failed: int = 0
    lost: int = 0


@dataclass(frozen=True)
class OpenedAttempt:
    """What claiming a job and opening an attempt of its stage returned: the new fence,
    the attempts before this one (a RUNNING one counted as lost), the attempt's number and
    the stage's input."""

    fence: int
    before: AttemptCounts
    attempt: int
    input: dict[str, Any]
    correlation_id: str | None = None
    #: For a redrive: the job it redrives, and that job's SUCCESS output of this stage, to
    #: be reused instead of calling the service (None: call it).
    redriven_from: UUID | None = None
    reusable: dict[str, Any] | None = None


@dataclass(frozen=True)
class StartedJob:
    """What starting a job did, in one step: whether it created the job, whether it moved
    it UPLOADED → PLANNING (and owed it its chain), or refused a repeated start whose input
    differs from the stored one (``mismatch``: nothing written); and the job as it is now
    (None only if it vanished meanwhile)."""

    job: Job | None
    created: bool
    moved: bool
    mismatch: bool = False


@dataclass(frozen=True)
class Notification:
    """Where the announcement of a job's end stands: ``status`` pending (not yet
    acknowledged by a 2xx), delivered, or skipped (no NOTIFY_URL when it came due)."""

    event_id: UUID
    status: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class JobDetail:
    job: Job
    transitions: list[Transition]
    stages: list[StageAttempt]
    result: dict[str, Any] | None
    #: The redrives of this job, oldest first.
    redrives: list[UUID] = field(default_factory=list)
    #: The terminal event's delivery (None before the job ends).
    notification: Notification | None = None


@dataclass(frozen=True)
class TerminalEvent:
    """One job's terminal event as claimed for delivery (``attempts`` counts this one)."""

    event_id: UUID
    job_id: UUID
    state: str
    error_message: str | None
    plan_reference: str | None
    result_reference: str | None
    completed_at: datetime | None
    redriven_from: UUID | None
    attempts: int
    correlation_id: str | None = None


@dataclass(frozen=True)
class PendingEnqueue:
    """A started job's chain, owed from ``from_state``, as claimed for sending; the
    job's state and fence now tell whether a chain already reached it."""

    job_id: UUID
    from_state: State
    correlation_id: str | None
    fence: int  # the job's fence when the row was written
    attempts: int
    current_state: State
    current_fence: int

    @property
    def obsolete(self) -> bool:
        """The job moved or was claimed by a stage since: a chain reached it."""
        return self.current_state is not self.from_state or self.current_fence != self.fence


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (the API's and the notifications' timestamps)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
