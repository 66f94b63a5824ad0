"""Runs every benchmark against one running stack and prints the figures.

Order matters: sequential latency first (an idle system), then the orchestrator beside
the bare chain (each alone on the machine), API latency (whose starts also keep the worker
busy), the per-stage overhead (read from the database for the sequential jobs), memory
after all of that work; then, not under QUICK, the concurrency sweep and capacity, which
stop the stack's worker and start workers of their own, and last the data-scale run on a
database of its own (the stack is down by then). The stack is stopped and its database,
Redis index and logs removed however the run ends; SIGTERM is treated like Ctrl-C so that
holds for it too.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import (
    api_latency,
    capacity,
    data_scale,
    downstream,
    latency,
    memory,
    overhead,
    versus,
)
from benchmarks.stack import (
    WORKER_CONCURRENCY,
    WORKER_POOL,
    BenchmarkError,
    Stack,
    running_stack,
)

#: ``QUICK=1``: the short run (under 2 minutes): fewer jobs, no sweep, no capacity.
QUICK = os.environ.get("QUICK", "") not in ("", "0")
IDLE_JOBS = 10 if QUICK else 30
BURST_JOBS = 100 if QUICK else 300
SWEEP = (10, 30)
PLOT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-throughput.svg"


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def measure(stack: Stack) -> dict[str, Any]:
    figures: dict[str, Any] = downstream.run(stack.downstream)
    latency_figures, sequential_ids = latency.run(stack, IDLE_JOBS)
    figures.update(latency_figures)
    versus_figures, ours, theirs = versus.run(stack, WORKER_CONCURRENCY, IDLE_JOBS,
                                              BURST_JOBS)
    figures.update(versus_figures)
    figures["idle_latency_p50_ms"] = figures["job_latency_p50_ms"]
    figures.update(api_latency.run(stack, sequential_ids))
    figures.update(overhead.run(stack, sequential_ids))
    figures.update(memory.run(stack))
    if not QUICK:
        stack.worker.stop()
        points = versus.sweep(stack, SWEEP, BURST_JOBS,
                              lambda level: capacity.capacity_worker(stack, "threads", level))
        points.append((WORKER_CONCURRENCY, ours.rate, theirs.rate))
        versus.write_plot(sorted(points), PLOT)
        print(f"[versus] plot written to {PLOT}", flush=True)
        figures["sweep"] = {str(level): {"orchestrator": round(o, 1), "bare": round(b, 1)}
                            for level, o, b in sorted(points)}
        figures.update(capacity.run(stack))
    return figures


def measure_data_scale() -> dict[str, Any]:
    """1 M jobs in a database of its own (not under QUICK): /metrics, lookups, the list
    and an idle recovery pass at 10 k and at 1 M."""
    if QUICK:
        return {}
    return {f"data_{key}": value for key, value in data_scale.run(quick=False).items()}


def report(figures: dict[str, Any], setup_s: float, total_s: float) -> dict[str, Any]:
    """The final JSON object: headline figures first, then the rest, then the context."""
    jobs = (latency.WARMUP + IDLE_JOBS + BURST_JOBS + api_latency.START_REQUESTS)
    headline = {key: figures[key] for key in (
        "throughput_ratio", "idle_latency_p50_ms", "bare_idle_latency_p50_ms",
        "throughput_jobs_per_s", "bare_throughput_per_s", "burst_latency_p50_ms",
        "bare_burst_latency_p50_ms")}
    return {**headline, **figures, "quick": QUICK, "jobs": jobs, "latency_jobs": IDLE_JOBS,
            "burst_jobs": BURST_JOBS, "worker_pool": WORKER_POOL,
            "worker_concurrency": WORKER_CONCURRENCY,
            "api_threads": api_latency.THREADS, "setup_s": round(setup_s, 1),
            "total_s": round(total_s, 1)}


def main() -> int:
    # Ctrl-C and SIGTERM both unwind through the stack's clean-up, even when SIGINT was
    # inherited as ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    print("[setup] fresh database, empty Redis index, scripted downstream, API, worker",
          flush=True)
    try:
        with running_stack() as stack:
            setup_s = time.monotonic() - began
            print(f"[setup] stack up in {setup_s:.1f} s at {stack.base_url}", flush=True)
            figures = measure(stack)
            print("[teardown] stopping the worker and the API, dropping the database",
                  flush=True)
        figures.update(measure_data_scale())
    except (BenchmarkError, AssertionError) as exc:  # AssertionError: a tests.support wait
        print(f"benchmark broken: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr, flush=True)
        return 130
    total_s = time.monotonic() - began
    print(f"[done] in {total_s:.1f} s", flush=True)
    print(json.dumps(report(figures, setup_s, total_s)), flush=True)
    return 0
