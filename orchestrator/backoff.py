"""How long to wait before a retry: capped exponential backoff with optional full jitter.

The delay before retry *k* (1, 2, …) is ``min(max, base × 2^(k−1))``; with jitter it is
drawn uniformly between 0 and that ("full jitter", as Celery's ``retry_jitter`` and AWS
Step Functions do). A service's ``Retry-After`` raises the delay to at least what it
asked, even past ``max``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def backoff_ceiling(retry: int, base: float, maximum: float) -> float:
    """The un-jittered delay before retry number ``retry`` (counting from 1)."""
    if retry < 1:
        raise ValueError("retry counts from 1")
    # Cap the exponent first so a large retry number cannot overflow a float.
    return min(maximum, base * 2 ** min(retry - 1, 64))


def retry_delay(
    retry: int,
    *,
    base: float,
    maximum: float,
    jitter: bool,
    retry_after: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before retry number ``retry``; see the module docstring."""
    ceiling = backoff_ceiling(retry, base, maximum)
    delay = uniform(0.0, ceiling) if jitter else ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable. A date in the past means "now": 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)
