"""Throughput: a burst of jobs started at once, timed until every one is COMPLETED.

``JOBS`` new jobs are started over HTTP by 16 client threads as fast as the API takes them;
the clock runs from the first request to the moment the jobs table shows all of them
terminal (polled every 20 ms from PostgreSQL). One worker with a prefork pool of
``WORKER_CONCURRENCY`` (2) processes runs their 4 × ``JOBS`` stage tasks; the downstream
answers at once, so this is the orchestrator's own capacity on this machine. The API's
intake rate (starts accepted per second) is reported too.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.stack import WORKER_CONCURRENCY, Stack
from benchmarks.stats import r

JOBS = 200
CLIENT_THREADS = 16
TIMEOUT = 120.0


def start_all(stack: Stack, job_ids: list[uuid.UUID]) -> None:
    local = threading.local()

    def start(job_id: uuid.UUID) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        stack.start_job(local.session, job_id)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(start, job_ids))


def run(stack: Stack) -> dict[str, float]:
    print(f"[throughput] {JOBS} jobs started at once ({CLIENT_THREADS} client threads); one "
          f"worker, prefork concurrency {WORKER_CONCURRENCY}", flush=True)
    job_ids = [uuid.uuid4() for _ in range(JOBS)]
    started = time.monotonic()
    start_all(stack, job_ids)
    accepted = time.monotonic() - started
    finished = stack.wait_all_terminal(job_ids, TIMEOUT) - started
    rate = JOBS / finished
    print(f"[throughput] all {JOBS} starts accepted in {accepted:.2f} s "
          f"({JOBS / accepted:.0f}/s); all COMPLETED after {finished:.2f} s: "
          f"{rate:.1f} jobs/s ({rate * 4:.0f} stages/s)", flush=True)
    return {"throughput_jobs_per_s": r(rate, 2), "throughput_wall_s": r(finished, 2),
            "api_intake_starts_per_s": r(JOBS / accepted)}
