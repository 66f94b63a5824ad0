"""What a downstream reply means: the stage's output, or a transient or permanent error.

Pure classification, no I/O: the HTTP adapter hands over the status, the headers it
needs and the body text; this module decides. Transient: connection errors, timeouts,
408, 429 and 5xx. Permanent: any other non-2xx, a body that is not a JSON object, or a
missing required field. Messages name the stage, the attempt, the status and the
service's own error text, truncated.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.backoff import parse_retry_after
from orchestrator.errors import (
    PermanentStageError,
    StageError,
    StageTimeout,
    TransientStageError,
)
from orchestrator.stages import StageSpec

MAX_ERROR_TEXT = 300
TRANSIENT_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL's JSONB could not store this JSON value, or None: it refuses the NUL
    character, and UTF-8 has no encoding for an unpaired UTF-16 surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL character (\\u0000), which cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


def attempt_label(spec: StageSpec, attempt: int, allowed: int | None = None) -> str:
    """``COSTING attempt 1/3``: how every message about an attempt begins. ``allowed`` is
    the stage's attempts plus those lost with their worker (which are not retries)."""
    return f"{spec.name} attempt {attempt}/{allowed or spec.max_attempts}"


def service_error_text(body: str) -> str:
    """The service's own words from an error body: ``error.message``, ``message`` or
    ``error`` of a JSON object when there is one, else the raw text; truncated."""
    text = body.strip()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        elif isinstance(parsed.get("message"), str):
            text = parsed["message"]
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return text or "(empty body)"


def classify_response(
    spec: StageSpec, attempt: int, status: int, body: str, retry_after_header: str | None,
    allowed: int | None = None,
) -> dict[str, Any]:
    """Return the stage output of a 2xx JSON object reply, or raise the StageError it is."""
    label = attempt_label(spec, attempt, allowed)
    service = spec.definition.service
    if not 200 <= status < 300:
        message = f"{label}: HTTP {status} from {service}: {service_error_text(body)}"
        if status in TRANSIENT_STATUSES or status >= 500:
            retry_after = (parse_retry_after(retry_after_header)
                           if status in RETRY_AFTER_STATUSES else None)
            raise TransientStageError(message, stage=spec.name, status=status,
                                      retry_after=retry_after)
        raise PermanentStageError(message, stage=spec.name, status=status)
    try:
        output = json.loads(body)
    except (ValueError, RecursionError):
        raise PermanentStageError(
            f"{label}: HTTP {status} from {service} is not JSON: {service_error_text(body)}",
            stage=spec.name, status=status) from None
    if not isinstance(output, dict):
        raise PermanentStageError(
            f"{label}: HTTP {status} from {service} is JSON but not an object",
            stage=spec.name, status=status)
    problem = unstorable(output)
    if problem:
        raise PermanentStageError(f"{label}: HTTP {status} from {service}: the output {problem}",
                                  stage=spec.name, status=status)
    required = spec.definition.required_field
    value = output.get(required) if required else "-"
    if not isinstance(value, str) or not value.strip():
        raise PermanentStageError(
            f"{label}: HTTP {status} from {service} has no {required}",
            stage=spec.name, status=status)
    return output


def too_large_error(spec: StageSpec, attempt: int, size: int, limit: int, *, declared: bool,
                    allowed: int | None = None) -> PermanentStageError:
    """A reply larger than ``MAX_STAGE_OUTPUT_BYTES``: permanent (the same service would
    send the same output again), and said with its size."""
    what = (f"declares {size} bytes" if declared
            else f"went past {limit} bytes, so reading stopped at {size}")
    return PermanentStageError(
        f"{attempt_label(spec, attempt, allowed)}: the reply of {spec.definition.service} "
        f"{what}; MAX_STAGE_OUTPUT_BYTES is {limit}", stage=spec.name, status=200)


def transport_error(spec: StageSpec, attempt: int, what: str, allowed: int | None = None
                    ) -> StageError:
    """A connection failure talking to the service: always transient."""
    return TransientStageError(
        f"{attempt_label(spec, attempt, allowed)}: {what} ({spec.definition.service})",
        stage=spec.name)


def timeout_error(spec: StageSpec, attempt: int, detail: str = "",
                  allowed: int | None = None) -> StageTimeout:
    """The attempt used up its stage's timeout: transient, like any other."""
    return StageTimeout(
        f"{attempt_label(spec, attempt, allowed)}: timed out after {spec.timeout:g}s{detail} "
        f"({spec.definition.service})", stage=spec.name)
