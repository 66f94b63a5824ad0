"""Backoff follows the contract: min(max, base·2^(k−1)), full jitter, Retry-After only raises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.backoff import backoff_ceiling, parse_retry_after, retry_delay

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


class FakeUniform:
    """Records its calls and returns the lower or upper bound."""

    def __init__(self, pick: str = "upper"):
        self.pick = pick
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return high if self.pick == "upper" else low


def _never_called(low: float, high: float) -> float:
    raise AssertionError("uniform must not be called without jitter")


@pytest.mark.parametrize(("k", "expected"),
                         [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60), (7, 60), (8, 60)])
def test_backoff_ceiling_defaults(k: int, expected: float) -> None:
    assert backoff_ceiling(k, 2.0, 60.0) == expected


@pytest.mark.parametrize("k", [65, 1_000, 10**9])
def test_backoff_ceiling_huge_retry_does_not_overflow(k: int) -> None:
    assert backoff_ceiling(k, 2.0, 60.0) == 60.0


@pytest.mark.parametrize("k", [0, -1, -100])
def test_backoff_ceiling_rejects_retry_below_one(k: int) -> None:
    with pytest.raises(ValueError):
        backoff_ceiling(k, 2.0, 60.0)


def test_backoff_ceiling_other_base() -> None:
    assert [backoff_ceiling(k, 0.5, 3.0) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("k", range(1, 9))
def test_retry_delay_without_jitter_is_the_ceiling(k: int) -> None:
    delay = retry_delay(k, base=2.0, maximum=60.0, jitter=False, uniform=_never_called)
    assert delay == backoff_ceiling(k, 2.0, 60.0)


@pytest.mark.parametrize(("k", "ceiling"), [(1, 2.0), (3, 8.0), (8, 60.0)])
def test_retry_delay_with_jitter_draws_between_zero_and_ceiling(k: int, ceiling: float) -> None:
    upper, lower = FakeUniform("upper"), FakeUniform("lower")
    assert retry_delay(k, base=2.0, maximum=60.0, jitter=True, uniform=upper) == ceiling
    assert retry_delay(k, base=2.0, maximum=60.0, jitter=True, uniform=lower) == 0.0
    assert upper.calls == [(0.0, ceiling)]
    assert lower.calls == [(0.0, ceiling)]


def test_retry_delay_with_real_jitter_stays_in_range() -> None:
    for _ in range(50):
        assert 0.0 <= retry_delay(3, base=2.0, maximum=60.0, jitter=True) <= 8.0


def test_retry_after_raises_the_delay_past_max() -> None:
    assert retry_delay(1, base=2.0, maximum=60.0, jitter=False, retry_after=120.0) == 120.0


def test_retry_after_raises_a_jittered_delay() -> None:
    fake = FakeUniform("lower")
    assert retry_delay(2, base=2.0, maximum=60.0, jitter=True, retry_after=7.0,
                       uniform=fake) == 7.0
    assert fake.calls == [(0.0, 4.0)]


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 3.9])
def test_retry_after_never_lowers_the_delay(retry_after: float) -> None:
    assert retry_delay(2, base=2.0, maximum=60.0, jitter=False,
                       retry_after=retry_after) == 4.0
    fake = FakeUniform("upper")
    assert retry_delay(2, base=2.0, maximum=60.0, jitter=True, retry_after=retry_after,
                       uniform=fake) == 4.0


@pytest.mark.parametrize(("header", "seconds"),
                         [("7", 7.0), ("0", 0.0), ("120", 120.0), ("  30  ", 30.0)])
def test_parse_retry_after_delta_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_parse_retry_after_http_date_in_the_future() -> None:
    header = "Sun, 01 Jun 2025 12:01:30 GMT"
    assert parse_retry_after(header, now=NOW) == 90.0


def test_parse_retry_after_http_date_with_offset() -> None:
    later = NOW + timedelta(seconds=45)
    header = later.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(header, now=NOW) == 45.0


@pytest.mark.parametrize("header", ["Sun, 01 Jun 2025 11:59:00 GMT",
                                    "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_parse_retry_after_http_date_in_the_past_is_zero(header: str) -> None:
    assert parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "   ", "soon", "7.5", "-5", "0x10",
                                    "Someday, 99 Foo 2025", "Wed, 32 Oct 2015 07:28:00 GMT"])
def test_parse_retry_after_garbage_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_parse_retry_after_superscript_digit_is_none() -> None:
    assert parse_retry_after("\u00b2", now=NOW) is None
