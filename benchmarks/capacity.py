"""Capacity: how many stages one worker holds in flight while they wait on their service.

Runs late, on workers of its own: the stack's worker is
stopped first, then each configuration below gets a fresh worker on the stack's database,
Redis index and queues, fed by the same API and scripted downstream:

* ``threads ×100`` — the default ``orchestrator worker`` (threads pool,
  WORKER_CONCURRENCY 100, the contract's default);
* ``threads ×N`` — the same with WORKER_CONCURRENCY = N, so every job's wait is in
  flight at once;
* ``prefork ×2`` — the old default, on a few jobs only (N of them would take ~N/2 × the
  wait): its wall for those, and the lower bound for N (the waits alone, two at a time).

For each threads worker, N jobs with instant stages, then N jobs whose PLANNING answers
after ``WAIT_S`` (the downstream's ``Reply(delay=...)``); both started at once over HTTP
and timed until every one is COMPLETED. Reported: each wall, the wall the waits added
(wait run − instant run) against the targets (< 12 s for 200 jobs with a 4 s PLANNING;
≤ instant wall + 2 × wait), the stages in flight at the peak (calls open at once in the
downstream, from its own order of events), and the worker's memory (RSS and PSS of its
process tree, sampled every ``SAMPLE_INTERVAL`` during the wait run) at the peak and idle
(just before the wait run, after the instant run warmed it up), hence the growth per
waiting stage. Figures are printed, never asserted.

``CAPACITY_JOBS`` (environment) changes N (default 200).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.memory import tree_memory
from benchmarks.stack import BenchmarkError, Stack, wait_all_ready
from benchmarks.stats import r
from benchmarks.versus import start_jobs
from cli.workers import process_count
from tests.support.downstream_server import Reply
from tests.support.processes import Service, start_worker

JOBS = int(os.environ.get("CAPACITY_JOBS", "200"))
WAIT_S = 4.0
DEFAULT_CONCURRENCY = 100
PREFORK_JOBS = 10
PREFORK_CONCURRENCY = 2
SAMPLE_INTERVAL = 0.2
TIMEOUT = 180.0


@dataclass
class Memory:
    rss: float
    pss: float | None


class Sampler:
    """Samples a process tree's memory in a thread; keeps the peak RSS and PSS."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_rss = 0.0
        self.peak_pss: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss, pss, _ = tree_memory(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if pss is not None:
                self.peak_pss = max(self.peak_pss or 0.0, pss)
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> Memory:
        return Memory(self.peak_rss, self.peak_pss)


@dataclass
class Run:
    wall: float
    peak_in_flight: int
    peak: Memory


def peak_in_flight(stack: Stack, job_ids: set[str]) -> int:
    """Most calls of these jobs open at once in the downstream, by its order of events."""
    with stack.downstream._lock:
        calls = [c for c in stack.downstream.calls if c.job_id in job_ids]
    events = sorted([(c.received, 1) for c in calls]
                    + [(c.ended, -1) for c in calls if c.ended is not None])
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def run_jobs(stack: Stack, worker: Service, jobs: int, wait: float) -> Run:
    job_ids = [uuid.uuid4() for _ in range(jobs)]
    if wait:
        for job_id in job_ids:
            stack.downstream.script(job_id, "PLANNING", Reply(delay=wait))
    with Sampler(worker.proc.pid) as sampler:
        started = time.monotonic()
        start_jobs(stack, job_ids)
        wall = stack.wait_all_terminal(job_ids, TIMEOUT) - started
    return Run(wall, peak_in_flight(stack, {str(j) for j in job_ids}), sampler.peak)


def idle_memory(worker: Service) -> Memory:
    rss, pss, _ = tree_memory(worker.proc.pid)
    return Memory(rss, pss)


@contextlib.contextmanager
def capacity_worker(stack: Stack, pool: str, concurrency: int) -> Iterator[Service]:
    env = {**stack.env, "WORKER_CONCURRENCY": str(concurrency)}
    worker = start_worker(f"capacity-{pool}-{concurrency}", env, stack.worker.log_path.parent,
                          concurrency=concurrency, pool=pool)
    try:
        if pool == "threads":
            wait_all_ready(worker, process_count(None, concurrency))
        yield worker
    except BenchmarkError:
        tail = worker.log_path.read_text(errors="replace").splitlines()[-15:]
        print(f"--- last {len(tail)} lines of the {worker.name} log ---", flush=True)
        for line in tail:
            print(line[:400], flush=True)
        raise
    finally:
        worker.stop()


def mem_text(memory: Memory) -> str:
    pss = f", PSS {memory.pss:.1f}" if memory.pss is not None else ""
    return f"RSS {memory.rss:.1f}{pss} MiB"


def threads_figures(stack: Stack, concurrency: int, prefix: str) -> dict[str, Any]:
    label = f"threads ×{concurrency}"
    with capacity_worker(stack, "threads", concurrency) as worker:
        instant = run_jobs(stack, worker, JOBS, 0)
        print(f"[capacity] {label}: {JOBS} instant jobs COMPLETED after {instant.wall:.2f} s "
              f"(at most {instant.peak_in_flight} downstream call(s) open at once)", flush=True)
        idle = idle_memory(worker)
        waiting = run_jobs(stack, worker, JOBS, WAIT_S)
    added = waiting.wall - instant.wall
    bound = instant.wall + 2 * WAIT_S
    growth = waiting.peak.rss - idle.rss
    per_stage = growth / waiting.peak_in_flight if waiting.peak_in_flight else 0.0
    print(f"[capacity] {label}: {JOBS} jobs with a {WAIT_S:.0f} s PLANNING COMPLETED after "
          f"{waiting.wall:.2f} s: +{added:.2f} s over the instant run (targets: < 12 s for "
          f"200 jobs with a 4 s PLANNING; wall ≤ instant + 2 × wait = {bound:.2f} s); "
          f"peak {waiting.peak_in_flight} stages in flight", flush=True)
    print(f"[capacity] {label}: worker memory idle {mem_text(idle)}, at the peak "
          f"{mem_text(waiting.peak)}: +{growth:.1f} MiB RSS, {per_stage * 1024:.0f} KiB per "
          f"waiting stage", flush=True)
    figures: dict[str, Any] = {
        f"{prefix}_concurrency": concurrency,
        f"{prefix}_instant_wall_s": r(instant.wall, 2),
        f"{prefix}_wait_wall_s": r(waiting.wall, 2),
        f"{prefix}_added_s": r(added, 2),
        f"{prefix}_peak_in_flight": waiting.peak_in_flight,
        f"{prefix}_worker_rss_mb_idle": r(idle.rss),
        f"{prefix}_worker_rss_mb_peak": r(waiting.peak.rss),
        f"{prefix}_mb_per_waiting_stage": r(per_stage, 3),
    }
    if idle.pss is not None and waiting.peak.pss is not None:
        figures[f"{prefix}_worker_pss_mb_idle"] = r(idle.pss)
        figures[f"{prefix}_worker_pss_mb_peak"] = r(waiting.peak.pss)
    return figures


def prefork_figures(stack: Stack) -> dict[str, Any]:
    label = f"prefork ×{PREFORK_CONCURRENCY}"
    with capacity_worker(stack, "prefork", PREFORK_CONCURRENCY) as worker:
        waiting = run_jobs(stack, worker, PREFORK_JOBS, WAIT_S)
    estimate = math.ceil(JOBS / PREFORK_CONCURRENCY) * WAIT_S
    print(f"[capacity] {label}: {PREFORK_JOBS} jobs with a {WAIT_S:.0f} s PLANNING COMPLETED "
          f"after {waiting.wall:.2f} s (peak {waiting.peak_in_flight} in flight, "
          f"{mem_text(waiting.peak)}); {JOBS} such jobs would take ≥ {estimate:.0f} s (their "
          f"waits alone, {PREFORK_CONCURRENCY} at a time), so not run", flush=True)
    return {"capacity_prefork_concurrency": PREFORK_CONCURRENCY,
            "capacity_prefork_jobs": PREFORK_JOBS,
            "capacity_prefork_wait_wall_s": r(waiting.wall, 2),
            "capacity_prefork_peak_in_flight": waiting.peak_in_flight,
            "capacity_prefork_estimate_s": r(estimate)}


def run(stack: Stack) -> dict[str, Any]:
    print(f"[capacity] stopping the stack's worker; each configuration gets a fresh "
          f"worker on the same queues: {JOBS} instant jobs, then {JOBS} jobs whose PLANNING "
          f"waits {WAIT_S:.0f} s on the downstream", flush=True)
    stack.worker.stop()
    figures: dict[str, Any] = {"capacity_jobs": JOBS, "capacity_wait_s": WAIT_S,
                               "capacity_pool": "threads"}
    figures.update(threads_figures(stack, DEFAULT_CONCURRENCY, "capacity"))
    if JOBS > DEFAULT_CONCURRENCY:  # else the default worker already holds them all
        figures.update(threads_figures(stack, JOBS, "capacity_all"))
    figures.update(prefork_figures(stack))
    return figures
