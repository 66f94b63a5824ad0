"""End-to-end latency of single jobs, one at a time.

Each job is started with ``POST /internal/jobs/{id}/start`` and timed from the client's
wall clock just before the request to the job's own ``completed_at`` (PostgreSQL's clock,
the same machine's: when its last stage's move to COMPLETED ran, a fraction of a
millisecond before that statement's commit). The jobs table is polled every 20 ms straight
from PostgreSQL only to see the end, so neither the API nor the database is kept busy by
the measurement, and its interval is not part of the figure; the bare chain's idle latency
(:mod:`benchmarks.versus`) is measured the same way, to its own stamp. The worker is
otherwise idle and the downstream answers at once, so this is the orchestrator's own
latency for four stages: HTTP start, enqueue, four Celery tasks each taking the lock,
claiming, calling the service and writing its result. A few warm-up jobs run first and
are not counted.
"""

from __future__ import annotations

import time
import uuid

import requests

from benchmarks.stack import BenchmarkError, Stack
from benchmarks.stats import percentile, r, summary

JOBS = 30
WARMUP = 4
JOB_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


def one_job(stack: Stack, session: requests.Session) -> tuple[uuid.UUID, float]:
    """Start a job and wait for it to complete: (job id, latency in ms)."""
    job_id = uuid.uuid4()
    started = time.time()
    stack.start_job(session, job_id)
    deadline = time.monotonic() + JOB_TIMEOUT
    while (state := stack.db.state(job_id)) not in ("COMPLETED", "FAILED"):
        if time.monotonic() > deadline:
            raise BenchmarkError(f"job {job_id} still {state} after {JOB_TIMEOUT}s")
        time.sleep(POLL_INTERVAL)
    if state == "FAILED":
        raise BenchmarkError(f"job {job_id} FAILED: {stack.db.errors([job_id])}")
    return job_id, (stack.db.completed_epochs([job_id])[job_id] - started) * 1000


def run(stack: Stack, jobs: int = JOBS) -> tuple[dict[str, float], list[uuid.UUID]]:
    """The figures, and the ids of the measured jobs (for the overhead benchmark)."""
    print(f"[latency] {WARMUP} warm-up jobs, then {jobs} jobs one at a time", flush=True)
    with requests.Session() as session:
        for _ in range(WARMUP):
            one_job(stack, session)
        measured = [one_job(stack, session) for _ in range(jobs)]
    latencies = [ms for _, ms in measured]
    print(f"[latency] start → COMPLETED: {summary(latencies)}", flush=True)
    figures = {"job_latency_p50_ms": r(percentile(latencies, 50)),
               "job_latency_p95_ms": r(percentile(latencies, 95)),
               "job_latency_max_ms": r(max(latencies))}
    return figures, [job_id for job_id, _ in measured]
