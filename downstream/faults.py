"""Per-job fault injection, for tests and demos of retries, timeouts and failures.

A job asks for faults in its input: ``{"faults": {"PARSING": {"fail_times": 2,
"status": 503, "retry_after": 1, "delay_s": 0.5, "message": "...", "body": "..."}}}``.
PLANNING copies ``faults`` into its output and every later stage copies it along, so
each stage sees them. The decision uses the request's ``attempt`` only (attempt <=
fail_times fails), so it is stateless and deterministic across processes.

Keys of one stage's spec:

- ``fail_times`` (int >= 0, default 0): attempts 1..fail_times fail.
- ``status`` (int 200..599, default 503): the status of a failing attempt.
- ``retry_after`` (int >= 0): sent as ``Retry-After`` on a failing attempt.
- ``message`` (str): the message in the JSON error of a failing attempt.
- ``body`` (str): sent verbatim instead of the JSON error (to test non-JSON answers).
- ``delay_s`` (number 0..3600): sleep this long before answering, on every attempt,
  or only on attempts 1..``delay_times`` when that is given (to test timeouts that
  later attempts recover from).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from downstream.errors import BadRequest, InjectedFault

STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")
MAX_DELAY_S = 3600.0


@dataclass(frozen=True)
class FaultSpec:
    """One stage's validated fault settings."""

    fail_times: int = 0
    status: int = 503
    retry_after: int | None = None
    message: str | None = None
    body: str | None = None
    delay_s: float = 0.0
    delay_times: int | None = None


def faults_of(stage_input: dict[str, Any]) -> dict[str, Any] | None:
    """The ``faults`` object carried in a stage input, validated; None when absent."""
    faults = stage_input.get("faults")
    if faults is None:
        return None
    if not isinstance(faults, dict):
        raise BadRequest("input.faults must be an object keyed by stage name")
    for stage, spec in faults.items():
        if stage not in STAGES:
            raise BadRequest(f"input.faults: unknown stage {stage!r}; expected one of {STAGES}")
        parse_spec(stage, spec)
    return faults


def parse_spec(stage: str, raw: Any) -> FaultSpec:
    """Validate one stage's fault spec, naming the bad key in the error."""
    where = f"input.faults.{stage}"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object")
    unknown = set(raw) - set(FaultSpec.__dataclass_fields__)
    if unknown:
        raise BadRequest(f"{where}: unknown key(s) {sorted(unknown)}")
    return FaultSpec(
        fail_times=_int(raw, "fail_times", where, 0, 0, None),
        status=_int(raw, "status", where, 503, 200, 599),
        retry_after=_opt_int(raw, "retry_after", where),
        message=_opt_str(raw, "message", where),
        body=_opt_str(raw, "body", where),
        delay_s=_delay(raw, where),
        delay_times=_opt_int(raw, "delay_times", where),
    )


def apply_faults(
    stage: str,
    attempt: int,
    stage_input: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Sleep and/or raise ``InjectedFault`` as this job's faults ask for this stage."""
    faults = faults_of(stage_input)
    if not faults or stage not in faults:
        return
    spec = parse_spec(stage, faults[stage])
    if spec.delay_s > 0 and (spec.delay_times is None or attempt <= spec.delay_times):
        sleep(spec.delay_s)
    if attempt <= spec.fail_times:
        message = spec.message or (
            f"injected fault: {stage} attempt {attempt} of {spec.fail_times} failing "
            f"attempt(s) answers {spec.status}"
        )
        raise InjectedFault(message, spec.status, spec.retry_after, spec.body)


def _int(
    raw: dict[str, Any], key: str, where: str, default: int, low: int, high: int | None
) -> int:
    """``raw[key]`` as an int within bounds, or a 400 naming the key."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}.{key} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"{where}.{key} must be {bound}, got {value}")
    return value


def _opt_int(raw: dict[str, Any], key: str, where: str) -> int | None:
    if raw.get(key) is None:
        return None
    return _int(raw, key, where, 0, 0, None)


def _opt_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def _delay(raw: dict[str, Any], where: str) -> float:
    value = raw.get("delay_s", 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{where}.delay_s must be a number of seconds, got {value!r}")
    if not 0 <= value <= MAX_DELAY_S:
        raise BadRequest(f"{where}.delay_s must be between 0 and {MAX_DELAY_S:g}, got {value}")
    return float(value)
