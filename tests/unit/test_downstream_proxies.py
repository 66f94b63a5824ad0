"""The stage client reads the environment's proxy settings once per service URL (not on
every call), and still honours them, NO_PROXY included."""

from __future__ import annotations

import pytest

from tasks.downstream_client import HttpDownstream


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "pricing.internal")


def test_a_proxy_from_the_environment_is_used(proxied: None) -> None:
    client = HttpDownstream(None)
    assert client._proxies_for("http://terraform.internal/plan")["http"] == (
        "http://proxy.internal:3128")


def test_no_proxy_is_honoured(proxied: None) -> None:
    client = HttpDownstream(None)
    assert client._proxies_for("http://pricing.internal/enrich") == {}


def test_the_environment_is_read_once_per_url(proxied: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client = HttpDownstream(None)
    first = client._proxies_for("http://terraform.internal/plan")
    monkeypatch.setenv("HTTP_PROXY", "http://elsewhere:1")
    assert client._proxies_for("http://terraform.internal/plan") == first
    assert client.session.trust_env is False  # requests does not look again per call
