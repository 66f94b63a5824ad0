"""`make bench QUICK=1` runs end to end and reports its figures: the orchestrator beside a
bare Celery chain, in one run. Only the report's shape is checked; speed targets live in
the benchmark's output, never in a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ("throughput_ratio", "idle_latency_p50_ms", "bare_idle_latency_p50_ms",
            "throughput_jobs_per_s", "bare_throughput_per_s", "burst_latency_p50_ms",
            "bare_burst_latency_p50_ms")


def test_the_quick_benchmark_reports_the_orchestrator_beside_a_bare_chain():
    done = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT,
                          env={**os.environ, "QUICK": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The headline first, every figure a positive number
    assert list(report)[:len(HEADLINE)] == list(HEADLINE)
    for key in HEADLINE:
        assert isinstance(report[key], int | float) and report[key] > 0, (key, report)
    # And each round's own ratio (its two bursts back to back), beside the best of each
    rounds = report["throughput_ratio_rounds"]
    assert len(rounds) == len(report["throughput_rounds"]) >= 1
    assert all(isinstance(x, int | float) and x > 0 for x in rounds), rounds
    assert report["quick"] is True
    assert report["worker_pool"] == "threads" and report["worker_concurrency"] == 100
    assert "[versus] bare chain" in done.stdout
