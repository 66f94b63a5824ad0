"""Runs every benchmark against one running stack and prints the figures.

Order matters: sequential latency first (an idle system), then the throughput burst, then
API latency (whose starts also keep the worker busy), the per-stage overhead (read from the
database for the sequential jobs), memory after all of that work, and finally capacity,
which stops the stack's worker and starts workers of its own. The stack is
stopped and its database, Redis index and logs removed however the run ends; SIGTERM is
treated like Ctrl-C so that holds for it too.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType
from typing import Any

from benchmarks import api_latency, capacity, downstream, latency, memory, overhead, throughput
from benchmarks.stack import WORKER_CONCURRENCY, WORKER_POOL, BenchmarkError, Stack, running_stack


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def measure(stack: Stack) -> dict[str, Any]:
    figures: dict[str, Any] = downstream.run(stack.downstream)
    latency_figures, sequential_ids = latency.run(stack)
    figures.update(latency_figures)
    figures.update(throughput.run(stack))
    figures.update(api_latency.run(stack, sequential_ids))
    figures.update(overhead.run(stack, sequential_ids))
    figures.update(memory.run(stack))
    figures.update(capacity.run(stack))
    return figures


def report(figures: dict[str, Any], setup_s: float, total_s: float) -> dict[str, Any]:
    """The final JSON object: headline figures first, then the rest, then the context."""
    jobs = (latency.WARMUP + latency.JOBS + throughput.JOBS + api_latency.START_REQUESTS)
    return {**figures, "jobs": jobs, "latency_jobs": latency.JOBS,
            "throughput_jobs": throughput.JOBS, "worker_pool": WORKER_POOL,
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
