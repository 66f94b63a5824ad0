"""The instant downstream: the tests' scripted server (it answers at once by default).

``probe`` times calls to it from this process, so the report shows what "instant" means
on this machine: the floor under every stage's figure.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from benchmarks.stats import percentile
from tests.support.downstream_server import ScriptedDownstream

PROBE_CALLS = 20


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
    print(f"[downstream] one kept-alive stage call: p50 {used:.1f} ms", flush=True)
    return {"downstream_call_p50_ms": round(used, 1)}
