"""The downstream services' errors, each carrying its HTTP status and error code.

Tree::

    DownstreamError                 (500, "internal_error")
    ├── BadRequest                  (400, "bad_request")      request itself is wrong
    ├── Unauthorized                (401, "unauthorized")
    ├── NotFound                    (404, "not_found")        unknown reference
    ├── MalformedPlan               (422, "malformed_plan")   the plan document is wrong
    ├── InvalidStageInput           (422, "invalid_input")    a stage's input is wrong
    └── InjectedFault               (any, "injected_fault")   fault injection (tests, demos)

Every 4xx is permanent (the orchestrator does not retry it), so each message says
exactly what is wrong and where, e.g. ``resource_changes[3].change.actions: unknown
action 'explode'``.
"""

from __future__ import annotations

from typing import Any


class DownstreamError(Exception):
    """Base error: an HTTP status, a machine-readable code and a human message."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The contract's error body: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(DownstreamError):
    """The request body or headers do not follow the downstream contract."""

    status = 400
    code = "bad_request"


class Unauthorized(DownstreamError):
    """Missing or wrong bearer token."""

    status = 401
    code = "unauthorized"


class NotFound(DownstreamError):
    """A reference (e.g. ``plan_reference``) that this service does not hold."""

    status = 404
    code = "not_found"


class MalformedPlan(DownstreamError):
    """The Terraform plan document is not a valid ``terraform show -json`` plan."""

    status = 422
    code = "malformed_plan"


class InvalidStageInput(DownstreamError):
    """A stage's ``input`` is not the previous stage's output."""

    status = 422
    code = "invalid_input"


class InjectedFault(DownstreamError):
    """A failure asked for by ``input.faults``; status and body come from the request."""

    code = "injected_fault"

    def __init__(
        self,
        message: str,
        status: int,
        retry_after: int | None = None,
        raw_body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.raw_body = raw_body
