"""The notification's body, signature and backoff, and the NOTIFY_*/OUTBOX_* settings."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from orchestrator.errors import ConfigError
from orchestrator.models import TerminalEvent
from orchestrator.outbox import (
    NotifyPolicy,
    event_body,
    event_payload,
    signature,
    verify_signature,
)
from orchestrator.settings import Settings

EVENT = TerminalEvent(
    event_id=UUID("6f1c1d9e-3c56-4d8e-9a51-0b8f3f0f9d11"),
    job_id=UUID("0b8f3f0f-3c56-4d8e-9a51-6f1c1d9e9d11"), state="FAILED",
    error_message="PARSING attempt 1/3: HTTP 400 — «bad plan»", plan_reference="plan-1",
    result_reference=None,
    completed_at=datetime(2026, 12, 1, 13, 0, 5, 120000, tzinfo=timezone(timedelta(hours=2))),
    redriven_from=UUID("11111111-2222-3333-4444-555555555555"), attempts=3)


def test_the_body_is_the_contract_s_fields_in_the_same_bytes_every_time():
    body = event_body(EVENT)
    assert body == event_body(EVENT)
    assert json.loads(body) == {
        "event_id": "6f1c1d9e-3c56-4d8e-9a51-0b8f3f0f9d11",
        "job_id": "0b8f3f0f-3c56-4d8e-9a51-6f1c1d9e9d11", "state": "FAILED",
        "error_message": "PARSING attempt 1/3: HTTP 400 — «bad plan»",
        "plan_reference": "plan-1", "result_reference": None,
        "completed_at": "2026-12-01T11:00:05.120000Z",
        "redriven_from": "11111111-2222-3333-4444-555555555555"}
    assert event_payload(EVENT)["completed_at"].endswith("Z")


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body():
    body = event_body(EVENT)
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature("s3cret", body) == f"sha256={expected}"
    assert verify_signature("s3cret", body, f"sha256={expected}")
    assert not verify_signature("other", body, f"sha256={expected}")
    assert not verify_signature("s3cret", body + b" ", f"sha256={expected}")
    assert not verify_signature("s3cret", body, None)


def test_retries_back_off_exponentially_within_the_cap():
    policy = NotifyPolicy(retry_base=1, retry_max=8, timeout=1)
    for attempts, ceiling in ((1, 1), (2, 2), (3, 4), (4, 8), (10, 8), (10_000, 8)):
        delays = [policy.delay(attempts) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert max(policy.delay(4) for _ in range(200)) > 4  # it does grow


def test_notify_settings_defaults_and_the_secret_kept_out_of_repr():
    assert Settings.from_env({}).notify_url is None
    settings = Settings.from_env({"NOTIFY_URL": "https://hooks.example/jobs",
                                  "NOTIFY_SECRET": "top-secret"})
    assert settings.notify_secret == "top-secret" and "top-secret" not in repr(settings)
    assert (settings.notify_timeout, settings.outbox_interval) == (5.0, 1.0)


@pytest.mark.parametrize(("env", "variable"), [
    ({"NOTIFY_URL": "https://hooks.example/jobs"}, "NOTIFY_SECRET"),
    ({"NOTIFY_URL": "ftp://hooks.example"}, "NOTIFY_URL"),
    ({"NOTIFY_TIMEOUT": "soon"}, "NOTIFY_TIMEOUT"),
    ({"NOTIFY_RETRY_BASE": "0"}, "NOTIFY_RETRY_BASE"),
    ({"NOTIFY_RETRY_MAX": "-1"}, "NOTIFY_RETRY_MAX"),
    ({"OUTBOX_INTERVAL": "nan"}, "OUTBOX_INTERVAL"),
    ({"OUTBOX_ENQUEUE_AFTER": "0"}, "OUTBOX_ENQUEUE_AFTER"),
])
def test_a_bad_notify_setting_names_its_variable(env, variable):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert error.value.args[0] == variable or variable in str(error.value)
    assert "top-secret" not in str(error.value)


def test_completed_at_is_utc():
    assert event_payload(EVENT)["completed_at"] == EVENT.completed_at.astimezone(
        UTC).isoformat().replace("+00:00", "Z")
