"""The newcomer's path: `orchestrator demo` and `orchestrator up` on the embedded default
(their own PostgreSQL and Redis), started and stopped cleanly, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from cli.embedded import free_port, port_is_free
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration
UNSET = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ORCHESTRATOR_API_TOKENS",
         "DOWNSTREAM_TOKEN", "CELERY_QUEUE", "LOCK_KEY_PREFIX")


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(ORCHESTRATOR_DATA_DIR=str(data_dir), ORCHESTRATOR_PORT=str(free_port()),
               DOWNSTREAM_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    return env


def leftovers(data_dir: Path) -> list[str]:
    """Processes still running from this stack: its PostgreSQL (by data directory) or any
    child of ours still alive."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline[:120]}")
    return found


@pytest.mark.parametrize("run", ["first run", "second run on the same data"])
def test_demo_runs_every_sample_and_leaves_nothing_running(tmp_path_factory, run):
    data_dir = tmp_path_factory.getbasetemp() / "demo-data"
    env = embedded_env(data_dir)
    result = subprocess.run([sys.executable, "-m", "cli", "demo"], env=env,
                            capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    # Every job ended as expected: three completed, the malformed plan failed cleanly
    for name in ("web-stack", "resize-instance", "teardown"):
        assert f"✓ {name}: COMPLETED" in out
    assert "✓ malformed: FAILED" in out
    assert "resource_changes[1].change.actions is missing" in out
    # The retry and the cost table show
    assert re.search(r"web-stack\s+.*HTTP 503 from plan interpreter", out)
    assert "retries 1" in out and "TOTAL USD/month" in out
    # the main sample's database is priced, and what is not priced is said beside the total
    assert re.search(r"aws_db_instance\.main\s+create\s+0\.00\s+111\.60", out), out
    assert "not in the total: 1 unpriced resource(s), aws_eip.nat" in out
    assert "PostgreSQL  embedded (pgserver)" in out and str(data_dir) in out
    # and the worker's pool fits the embedded server: no connection-budget warning
    budget = [json.loads(line) for line in (data_dir / "demo-logs" / "worker.log")
              .read_text().splitlines() if '"worker.database_budget"' in line]
    # (one line from each of the worker's processes, each counting the whole worker)
    assert budget and all(b["level"] == "INFO" for b in budget), budget
    # And nothing it started is still running
    assert leftovers(data_dir) == []
    assert port_is_free(int(env["ORCHESTRATOR_PORT"]))
    assert port_is_free(int(env["DOWNSTREAM_PORT"]))


def test_up_serves_until_ctrl_c_then_stops_everything(tmp_path):
    env = embedded_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop." in line:
                break
        text = "".join(lines)
        token = re.search(r"token: (\S+)", text).group(1)
        api = f"http://127.0.0.1:{env['ORCHESTRATOR_PORT']}"
        assert requests.get(f"{api}/readyz", timeout=5).status_code == 200
        listed = requests.get(f"{api}/internal/jobs",
                              headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert listed.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    wait_for(lambda: leftovers(tmp_path) == [], 30, "every process of the stack to exit")
    assert port_is_free(int(env["ORCHESTRATOR_PORT"]))


def test_ctrl_c_during_the_demo_stops_everything_it_started(tmp_path):
    env = embedded_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "demo"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("  API "):
            break
    # Ctrl-C once everything runs: PostgreSQL, Redis, the services, a worker, the API
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert "everything started was stopped" in rest
    wait_for(lambda: leftovers(tmp_path) == [], 30, "every process of the demo to exit")
    assert port_is_free(int(env["ORCHESTRATOR_PORT"]))
