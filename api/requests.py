"""Parsing what a caller sends: ids, bodies, query parameters, cursors, correlation ids.
Every failure is a :class:`api.errors.BadRequest` whose message says what to fix."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from datetime import datetime
from typing import Any

from flask import Request

from api.errors import BadRequest
from orchestrator.models import MAX_ERROR_MESSAGE
from orchestrator.outcomes import unstorable
from orchestrator.states import State

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"job_id must be a UUID, got {value[:64]!r}", "invalid_job_id"
                         ) from None


def correlation_id(request: Request) -> str:
    """The caller's ``X-Correlation-ID`` when it is a sane token, else a new one."""
    given = request.headers.get("X-Correlation-ID", "")
    return given if _CORRELATION_ID.match(given) else str(uuid.uuid4())


def json_object(request: Request, *, required: bool) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("request body must be a JSON object", "invalid_body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", "invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", "invalid_body")
    problem = unstorable(body)
    if problem:
        raise BadRequest(f"request body {problem}", "invalid_body")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}", "invalid_body")


def start_input(request: Request) -> dict[str, Any] | None:
    """The start's ``input``; None when the request gives none (no body, or no or a null
    ``input``): a repeated start without one never conflicts with the stored input."""
    body = json_object(request, required=False)
    _only(body, {"input"})
    value = body.get("input")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("input must be a JSON object", "invalid_body")
    return value


def redrive_id(request: Request) -> uuid.UUID:
    """The new job's id: the body's ``job_id`` (so a repeated call is idempotent), else a
    fresh one."""
    body = json_object(request, required=False)
    _only(body, {"job_id"})
    value = body.get("job_id")
    if value is None:
        return uuid.uuid4()
    if not isinstance(value, str):
        raise BadRequest("job_id must be a UUID string", "invalid_body")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"job_id is not a UUID: {value[:64]!r}", "invalid_body") from None


def fail_message(request: Request) -> str:
    body = json_object(request, required=True)
    _only(body, {"error_message"})
    message = body.get("error_message")
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("error_message is required: a non-empty string", "invalid_body")
    if len(message) > MAX_ERROR_MESSAGE:
        raise BadRequest(f"error_message is longer than {MAX_ERROR_MESSAGE} characters",
                         "invalid_body")
    return message


def state_filter(value: str | None) -> State | None:
    if value in (None, ""):
        return None
    try:
        return State(value.upper())
    except ValueError:
        raise BadRequest(f"state must be one of {', '.join(s.value for s in State)}",
                         "invalid_state") from None


def limit(value: str | None) -> int:
    if value in (None, ""):
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", "invalid_limit")
    return int(value)


def encode_cursor(created_at: datetime, job: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(job)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if value in (None, ""):
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created, job = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(job)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("cursor is not one this API returned", "invalid_cursor") from None
