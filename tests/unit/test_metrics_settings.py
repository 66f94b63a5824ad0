"""METRICS_FLUSH_INTERVAL, METRICS_KEY_PREFIX and WORKER_METRICS_PORT: defaults, the
prefix that follows the deployment's lock prefix, and bad values named."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings


def test_defaults():
    settings = Settings.from_env({})
    assert settings.metrics_flush_interval == 5.0
    assert settings.metrics_key_prefix == "metrics:"
    assert settings.worker_metrics_port is None


@pytest.mark.parametrize(("lock_prefix", "metrics_prefix"), [
    ("job:lock:", "metrics:"),
    ("staging:job:lock:", "staging:metrics:"),
    ("locks/", "locks/metrics:"),
])
def test_the_metrics_keys_follow_the_deployments_lock_prefix(lock_prefix, metrics_prefix):
    assert Settings.from_env({"LOCK_KEY_PREFIX": lock_prefix}).metrics_key_prefix == (
        metrics_prefix)


def test_given_values_are_taken():
    settings = Settings.from_env({"METRICS_FLUSH_INTERVAL": "0.5",
                                  "METRICS_KEY_PREFIX": "orch:m:",
                                  "WORKER_METRICS_PORT": "9100"})
    assert (settings.metrics_flush_interval, settings.metrics_key_prefix,
            settings.worker_metrics_port) == (0.5, "orch:m:", 9100)


@pytest.mark.parametrize(("variable", "bad"), [
    ("METRICS_FLUSH_INTERVAL", "0"), ("METRICS_FLUSH_INTERVAL", "soon"),
    ("METRICS_FLUSH_INTERVAL", "nan"), ("METRICS_FLUSH_INTERVAL", "7200"),
    ("WORKER_METRICS_PORT", "0"), ("WORKER_METRICS_PORT", "65536"),
    ("WORKER_METRICS_PORT", "http"), ("WORKER_METRICS_PORT", "91.5"),
])
def test_a_bad_value_is_refused_naming_its_variable(variable, bad):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: bad})
    assert raised.value.variable == variable
    assert bad in str(raised.value)
