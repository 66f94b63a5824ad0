"""The instant downstream: the tests' scripted server, with Nagle's algorithm off.

``tests.support.downstream_server.ScriptedDownstream`` answers at once, but it writes the
status line and headers and then the body in two ``send`` calls. On a kept-alive
connection (the worker reuses one ``requests.Session``) Nagle's algorithm holds the body
back until the worker ACKs the headers, which Linux delays by ~40 ms: every stage call then
takes ~44 ms instead of ~1 ms. The benchmarks measure the orchestrator, not that
interaction, so their server sets ``TCP_NODELAY`` (``disable_nagle_algorithm``).

``probe`` times calls to a server from this process, so the report shows what "instant"
means on this machine — for the server used and for the unpatched one.
"""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from benchmarks.stats import percentile
from tests.support.downstream_server import ScriptedDownstream

PROBE_CALLS = 20


class InstantDownstream(ScriptedDownstream):
    """ScriptedDownstream whose connections send each write at once (TCP_NODELAY)."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler()

        class NoDelayHandler(base):  # type: ignore[valid-type,misc]
            disable_nagle_algorithm = True

        return NoDelayHandler


def probe(server: ScriptedDownstream, calls: int = PROBE_CALLS) -> float:
    """p50 in ms of ``calls`` POSTs to PLANNING over one kept-alive session."""
    body: dict[str, Any] = {"job_id": "probe", "stage": "PLANNING", "attempt": 1, "input": {}}
    times: list[float] = []
    with requests.Session() as session:
        for _ in range(calls):
            started = time.perf_counter()
            session.post(f"{server.base_url}/planning", json=body, timeout=5).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50)


def run(server: ScriptedDownstream) -> dict[str, float]:
    used = probe(server)
    plain = ScriptedDownstream().start()
    try:
        unpatched = probe(plain)
    finally:
        plain.stop()
    print(f"[downstream] one kept-alive stage call: p50 {used:.1f} ms with TCP_NODELAY "
          f"(used here), {unpatched:.1f} ms with tests.support's server as is", flush=True)
    return {"downstream_call_p50_ms": round(used, 1),
            "downstream_call_unpatched_p50_ms": round(unpatched, 1)}
