"""The orchestrator beside a bare Celery chain, in one run.

The peer (:mod:`benchmarks.bare_chain`) is four Celery tasks chained, each one HTTP POST
to the same scripted downstream, on a worker with the same broker (the stack's Redis), the
same pool (threads) and the same concurrency as the orchestrator's worker. Each side runs
alone (the other's worker idle or stopped), so they never share the two cores:

* idle latency: single jobs one at a time, from the client's wall clock just before the
  start (the orchestrator's ``POST …/start``; the chain's ``apply_async``) to each side's
  own stamp of the end (the job's ``completed_at``; the time the chain's last task wrote
  to Redis), the end seen by polling every 20 ms (:mod:`benchmarks.latency`);
* burst: ``BURST_JOBS`` started at once by 16 client threads (the orchestrator's through
  its API), timed until every one has ended: throughput, and each job's latency from its
  own start to its own end (p50), which shows whether jobs already in flight finish first;
  ``ROUNDS`` bursts per side in turns, the best of each side reported (the machine may be
  shared);
* a sweep over worker concurrency (not under ``QUICK``), for the plot.

``throughput_ratio`` is the orchestrator's burst throughput over the chain's.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from benchmarks import bare_chain
from benchmarks.stack import BenchmarkError, Stack
from benchmarks.stats import percentile, r, summary
from cli.workers import process_count, shares
from orchestrator.settings import Settings
from tests.support.processes import Service

CLIENT_THREADS = 16
POLL_INTERVAL = 0.02
TIMEOUT = 300.0


@dataclass
class Burst:
    jobs: int
    wall: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.jobs / self.wall

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)


def _fan_out(start: Callable[[Any, uuid.UUID], object], job_ids: Sequence[uuid.UUID],
             make_client: Callable[[], Any]) -> dict[uuid.UUID, float]:
    """Start every job from CLIENT_THREADS threads; the wall-clock time of each start."""
    local = threading.local()
    stamps: dict[uuid.UUID, float] = {}

    def one(job_id: uuid.UUID) -> None:
        if not hasattr(local, "client"):
            local.client = make_client()
        stamps[job_id] = time.time()
        start(local.client, job_id)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(one, job_ids))
    return stamps


# --- the orchestrator's side ------------------------------------------------------------


def start_jobs(stack: Stack, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, float]:
    """Start every job through the API from CLIENT_THREADS threads."""
    return _fan_out(stack.start_job, job_ids, requests.Session)


def orchestrator_burst(stack: Stack, jobs: int) -> Burst:
    job_ids = [uuid.uuid4() for _ in range(jobs)]
    terminal_before = stack.db.terminal_total()
    began = time.monotonic()
    stamps = start_jobs(stack, job_ids)
    wall = stack.wait_all_terminal(job_ids, TIMEOUT, terminal_before=terminal_before) - began
    ended = stack.db.completed_epochs(job_ids)
    return Burst(jobs, wall, [(ended[j] - stamps[j]) * 1000 for j in job_ids])


# --- the bare chain's side --------------------------------------------------------------


class BareChain:
    """The bare chain's worker and the means to start chains and see them end."""

    def __init__(self, stack: Stack, concurrency: int, processes: int):
        broker = Settings.from_env(stack.env).broker_url
        assert broker
        self.queue = f"{stack.env['CELERY_QUEUE']}-bare-{concurrency}x{processes}"
        self.done_key = f"{self.queue}:done"
        bare_chain.configure(broker, self.queue)
        self.redis = redis.Redis.from_url(broker)
        # As many Celery workers as the orchestrator's worker has processes, the same
        # concurrency shared between them the same way
        self.workers = []
        for n, share in enumerate(shares(concurrency, processes), start=1):
            env = {"BARE_BROKER_URL": broker, "BARE_QUEUE": self.queue,
                   "BARE_DOWNSTREAM": stack.downstream.base_url,
                   "BARE_DONE_KEY": self.done_key, "BARE_CONCURRENCY": str(share)}
            argv = [sys.executable, "-m", "celery", "-A", "benchmarks.bare_chain", "worker",
                    "--pool", "threads", "--concurrency", str(share), "--loglevel",
                    "WARNING", "--hostname", f"bare-{concurrency}x{processes}-{n}@%h",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]
            self.workers.append(Service(f"bare-{concurrency}x{processes}-{n}", argv, env,
                                        stack.worker.log_path.parent))
        # Ready when a first chain has gone through
        try:
            self.one(uuid.uuid4())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.delete(self.done_key, self.queue)
        self.redis.close()

    def dead(self) -> bool:
        return any(worker.proc.poll() is not None for worker in self.workers)

    def ended(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, float]:
        values = self.redis.hmget(self.done_key, [str(j) for j in job_ids])
        return {j: float(v) for j, v in zip(job_ids, values, strict=True) if v is not None}

    def one(self, job_id: uuid.UUID) -> float:
        """Start one chain and wait for its end: its latency in ms, to its own stamp."""
        started = time.time()
        bare_chain.send(str(job_id), self.queue)
        deadline = time.monotonic() + 60
        while (ended := self.redis.hget(self.done_key, str(job_id))) is None:
            if self.dead() or time.monotonic() > deadline:
                raise BenchmarkError(f"bare chain {job_id} did not end; worker log: "
                                     + self.workers[0].log_path.read_text()[-2000:])
            time.sleep(POLL_INTERVAL)
        return (float(ended) - started) * 1000

    def burst(self, jobs: int) -> Burst:
        job_ids = [uuid.uuid4() for _ in range(jobs)]
        ended_before = self.redis.hlen(self.done_key)
        began = time.monotonic()
        stamps = _fan_out(lambda _, job_id: bare_chain.send(str(job_id), self.queue),
                          job_ids,
                          lambda: None)
        deadline = began + TIMEOUT
        # Watched as cheaply as the orchestrator's side: an O(1) count, then these chains
        while (self.redis.hlen(self.done_key) - ended_before < jobs
               or len(self.ended(job_ids)) < jobs):
            if self.dead() or time.monotonic() > deadline:
                raise BenchmarkError(f"bare burst did not end in {TIMEOUT}s")
            time.sleep(0.02)
        wall = time.monotonic() - began
        ended = self.ended(job_ids)
        return Burst(jobs, wall, [(ended[j] - stamps[j]) * 1000 for j in job_ids])

    def idle(self, jobs: int) -> list[float]:
        return [self.one(uuid.uuid4()) for _ in range(jobs)]


@contextlib.contextmanager
def bare_chain_worker(stack: Stack, concurrency: int, processes: int | None = None
                      ) -> Iterator[BareChain]:
    """The bare chain's worker(s): as many processes as ``orchestrator worker`` runs at
    this concurrency, unless ``processes`` says otherwise."""
    bare = BareChain(stack, concurrency, processes or process_count(None, concurrency))
    try:
        yield bare
    finally:
        bare.stop()


# --- the run ----------------------------------------------------------------------------


#: Bursts per side, taken in turns (ours, theirs, ours, …); the best of each side is
#: reported, so a moment of load from elsewhere on the machine hurts neither side alone.
ROUNDS = 2


def run(stack: Stack, concurrency: int, idle_jobs: int, burst_jobs: int
        ) -> tuple[dict[str, Any], Burst, Burst]:
    """Idle latency of the bare chain, then ROUNDS bursts on each side in turns (the
    stack's worker and a bare chain's worker of the same concurrency, each idle while the
    other runs); the figures and each side's best burst."""
    processes = process_count(None, concurrency)
    with contextlib.ExitStack() as workers:
        bare = workers.enter_context(bare_chain_worker(stack, concurrency))
        # Celery's threads pool as it runs a plain `celery worker -P threads`: one process
        # (when ours runs more, the chain in one process is measured too, as before)
        single = (workers.enter_context(bare_chain_worker(stack, concurrency, 1))
                  if processes > 1 else None)
        idle = bare.idle(idle_jobs)
        print(f"[versus] bare chain: idle latency {summary(idle)}", flush=True)
        ours_runs: list[Burst] = []
        theirs_runs: list[Burst] = []
        single_runs: list[Burst] = []
        for n in range(1, ROUNDS + 1):
            ours_runs.append(orchestrator_burst(stack, burst_jobs))
            print(f"[versus] round {n}: orchestrator (threads ×{concurrency} in "
                  f"{processes} process(es)), burst of {burst_jobs}: "
                  f"{ours_runs[-1].rate:.1f} jobs/s, each job "
                  f"{summary(ours_runs[-1].latencies_ms)}", flush=True)
            theirs_runs.append(bare.burst(burst_jobs))
            print(f"[versus] round {n}: bare chain ({processes} process(es)), burst of "
                  f"{burst_jobs}: {theirs_runs[-1].rate:.1f} chains/s, each "
                  f"{summary(theirs_runs[-1].latencies_ms)}", flush=True)
            if single is not None:
                single_runs.append(single.burst(burst_jobs))
                print(f"[versus] round {n}: bare chain (one process), burst of "
                      f"{burst_jobs}: {single_runs[-1].rate:.1f} chains/s, each "
                      f"{summary(single_runs[-1].latencies_ms)}", flush=True)
    ours = max(ours_runs, key=lambda b: b.rate)
    theirs = max(theirs_runs, key=lambda b: b.rate)
    ratio = ours.rate / theirs.rate
    # Each round's own ratio: its two bursts ran back to back, so a drift of the machine's
    # speed over the run (seen: ±30 % on a shared VM) weighs on both alike
    by_round = [o.rate / t.rate for o, t in zip(ours_runs, theirs_runs, strict=True)]
    print(f"[versus] best of {ROUNDS}: {ours.rate:.1f} vs {theirs.rate:.1f}: throughput "
          f"ratio {ratio:.2f} (target ≥ 0.6, goal 0.8), round by round "
          f"{', '.join(f'{x:.2f}' for x in by_round)}; burst p50 {ours.p50:.0f} ms vs "
          f"{theirs.p50:.0f} ms", flush=True)
    figures = {"throughput_jobs_per_s": r(ours.rate, 2), "throughput_wall_s": r(ours.wall, 2),
               "bare_throughput_per_s": r(theirs.rate, 2), "throughput_ratio": r(ratio, 2),
               "burst_latency_p50_ms": r(ours.p50), "bare_burst_latency_p50_ms": r(theirs.p50),
               "bare_idle_latency_p50_ms": r(percentile(idle, 50)),
               "throughput_ratio_rounds": [r(x, 2) for x in by_round],
               "throughput_rounds": [r(b.rate, 1) for b in ours_runs],
               "bare_throughput_rounds": [r(b.rate, 1) for b in theirs_runs],
               "worker_processes_each_side": processes}
    if single_runs:
        best = max(single_runs, key=lambda b: b.rate)
        print(f"[versus] against the chain in one process: {ours.rate:.1f} vs "
              f"{best.rate:.1f}, ratio {ours.rate / best.rate:.2f}", flush=True)
        figures.update({"bare_one_process_throughput_per_s": r(best.rate, 2),
                        "throughput_ratio_one_process_chain": r(ours.rate / best.rate, 2),
                        "bare_one_process_burst_latency_p50_ms": r(best.p50)})
    return figures, ours, theirs


def sweep(stack: Stack, levels: Sequence[int], burst_jobs: int,
          start_worker: Callable[[int], contextlib.AbstractContextManager[Any]]
          ) -> list[tuple[int, float, float]]:
    """(concurrency, orchestrator jobs/s, bare chains/s) at each level, each side on a
    worker of its own."""
    points = []
    for level in levels:
        with start_worker(level):
            ours = orchestrator_burst(stack, burst_jobs)
        with bare_chain_worker(stack, level) as bare:
            theirs = bare.burst(burst_jobs)
        print(f"[versus] concurrency {level}: orchestrator {ours.rate:.1f} jobs/s, bare "
              f"{theirs.rate:.1f} chains/s (ratio {ours.rate / theirs.rate:.2f})", flush=True)
        points.append((level, ours.rate, theirs.rate))
    return points


def write_plot(points: Sequence[tuple[int, float, float]], path: Path) -> None:
    """An SVG bar chart: jobs/s by worker concurrency, the orchestrator beside the bare
    chain."""
    width, height, left, bottom, top = 700, 300, 60, 40, 30
    top_rate = max(max(p[1], p[2]) for p in points) * 1.15
    slot = (width - left - 20) / len(points)
    bar = slot / 3

    def y(rate: float) -> float:
        return top + (height - top - bottom) * (1 - rate / top_rate)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="18">Jobs/s by worker concurrency (threads pool): '
             'orchestrator (dark) beside a bare Celery chain (light)</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 20}" '
             f'y2="{height - bottom}" stroke="black"/>']
    for n, (level, ours, theirs) in enumerate(points):
        x = left + n * slot + slot / 6
        for offset, rate, colour in ((0, ours, "#2b4c7e"), (bar, theirs, "#9bb7d4")):
            parts.append(f'<rect x="{x + offset:.1f}" y="{y(rate):.1f}" width="{bar:.1f}" '
                         f'height="{height - bottom - y(rate):.1f}" fill="{colour}"/>')
            parts.append(f'<text x="{x + offset + bar / 2:.1f}" y="{y(rate) - 4:.1f}" '
                         f'text-anchor="middle">{rate:.0f}</text>')
        parts.append(f'<text x="{x + bar:.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">×{level} ({ours / theirs:.2f})</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
