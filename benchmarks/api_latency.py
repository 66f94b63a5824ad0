"""Latency of the API's two busiest calls under light concurrency.

8 client threads, each with its own keep-alive session, against the API under gunicorn
(the product's defaults: 2 gthread workers × 8 threads):

* ``GET /internal/jobs/{id}/state`` — ``GET_REQUESTS`` reads of completed jobs, measured
  first, while the worker is idle;
* ``POST /internal/jobs/{id}/start`` — ``START_REQUESTS`` new jobs (insert, move to
  PLANNING, enqueue the chain). The worker begins running these jobs at once, so the
  starts share the machine's 2 cores with it, as they would in use.

Each request is timed on the client (connection reuse included). The started jobs are then
awaited, so a start that enqueued nothing shows up as a failure.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.stack import BenchmarkError, Stack
from benchmarks.stats import percentile, r, summary

THREADS = 8
GET_REQUESTS = 400
START_REQUESTS = 200
TIMEOUT = 120.0


def timed_requests(calls: Sequence[Callable[[requests.Session], None]]) -> list[float]:
    """Run ``calls`` on THREADS threads (a session each); each call's duration in ms."""
    local = threading.local()

    def timed(call: Callable[[requests.Session], None]) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        call(local.session)
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(timed, calls))


def get_state_call(stack: Stack, job_id: uuid.UUID) -> Callable[[requests.Session], None]:
    def call(session: requests.Session) -> None:
        response = session.get(f"{stack.base_url}/internal/jobs/{job_id}/state",
                               headers=stack.headers, timeout=30)
        if response.status_code != 200:
            raise BenchmarkError(f"GET state {job_id}: HTTP {response.status_code}")

    return call


def start_call(stack: Stack, job_id: uuid.UUID) -> Callable[[requests.Session], None]:
    def call(session: requests.Session) -> None:
        stack.start_job(session, job_id)

    return call


def run(stack: Stack, existing: Sequence[uuid.UUID]) -> dict[str, float]:
    print(f"[api] {THREADS} threads: {GET_REQUESTS} × GET state, then {START_REQUESTS} × "
          f"POST start", flush=True)
    reads = [get_state_call(stack, existing[i % len(existing)]) for i in range(GET_REQUESTS)]
    state_ms = timed_requests(reads)
    print(f"[api] GET state: {summary(state_ms)}", flush=True)
    new_ids = [uuid.uuid4() for _ in range(START_REQUESTS)]
    start_ms = timed_requests([start_call(stack, job_id) for job_id in new_ids])
    print(f"[api] POST start: {summary(start_ms)}", flush=True)
    stack.wait_all_terminal(new_ids, TIMEOUT)
    print(f"[api] all {START_REQUESTS} jobs started here COMPLETED", flush=True)
    return {"api_start_p50_ms": r(percentile(start_ms, 50)),
            "api_start_p99_ms": r(percentile(start_ms, 99)),
            "api_state_p50_ms": r(percentile(state_ms, 50)),
            "api_state_p99_ms": r(percentile(state_ms, 99))}
