"""The product started as a user starts it (`orchestrator api`, a worker), driven over
HTTP: the happy path, a start race, and the operator's CLI view."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cli.embedded import free_port
from tests.conftest import API_TOKEN, make_env
from tests.support.downstream_server import Reply
from tests.support.processes import start_api, start_worker, wait_for

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def stack(module_database, redis_url, downstream, log_dir):
    env = make_env(module_database, redis_url, downstream)
    port = free_port()
    api = start_api(env, log_dir, port)
    worker = start_worker("e2e-worker", env, log_dir, via_celery=True)  # celery -A tasks
    yield f"http://127.0.0.1:{port}", env, api, worker
    worker.stop()
    api.stop()


def wait_terminal(base: str, job_id: object, timeout: float = 30) -> dict:
    def terminal():
        job = requests.get(f"{base}/internal/jobs/{job_id}", headers=HEADERS, timeout=5).json()
        return job if job["current_state"] in ("COMPLETED", "FAILED") else None

    return wait_for(terminal, timeout, f"job {job_id} to end", interval=0.02)


def test_a_job_completes_over_http(stack, downstream):
    base, _, api, _ = stack
    job_id = uuid.uuid4()
    started = time.monotonic()
    response = requests.post(f"{base}/internal/jobs/{job_id}/start", json={"input": {"n": 1}},
                             headers={**HEADERS, "X-Correlation-ID": "e2e-1"}, timeout=10)
    assert response.status_code == 202, response.text
    job = wait_terminal(base, job_id)
    print(f"\nend-to-end latency with an instant downstream: "
          f"{(time.monotonic() - started) * 1000:.0f} ms")
    assert job["current_state"] == "COMPLETED"
    assert len(job["transitions"]) == 5
    assert [c.headers["X-Correlation-ID"] for c in downstream.calls_for(job_id)] == ["e2e-1"] * 4
    assert api.has_event("job.transition", job_id=str(job_id), correlation_id="e2e-1",
                         to_state="PLANNING")


def test_many_concurrent_starts_of_one_new_job_start_it_once(stack, downstream):
    base, _, _, _ = stack
    job_id = uuid.uuid4()
    # PLANNING is held until every start has been answered, so no start can arrive after
    # the job has finished (it would rightly get 409).
    every_start_answered = threading.Event()
    downstream.script(job_id, "PLANNING", Reply(release=every_start_answered, hang_for=120))

    def start(_):
        return requests.post(f"{base}/internal/jobs/{job_id}/start", headers=HEADERS,
                             timeout=30).status_code

    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(start, range(16)))
    finally:
        every_start_answered.set()
    assert sorted(statuses) == [200] * 15 + [202]
    job = wait_terminal(base, job_id)
    assert job["current_state"] == "COMPLETED"
    # One chain: each stage called once, one transition into PLANNING
    assert [c.stage for c in downstream.calls_for(job_id)] == [
        "PLANNING", "PARSING", "ENRICHING", "COSTING"]
    assert [t["to_state"] for t in job["transitions"]].count("PLANNING") == 1


def test_the_operator_sees_the_job_from_the_cli(stack):
    base, env, _, _ = stack
    job_id = uuid.uuid4()
    requests.post(f"{base}/internal/jobs/{job_id}/start", headers=HEADERS, timeout=10)
    wait_terminal(base, job_id)
    cli = [str(Path(sys.executable).parent / "orchestrator"), "jobs"]
    shown = subprocess.run([*cli, "show", str(job_id)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "state      COMPLETED (from COSTING)" in shown.stdout
    for stage in ("PLANNING", "PARSING", "ENRICHING", "COSTING"):
        assert f"{stage}" in shown.stdout
    assert shown.stdout.count("SUCCESS") == 4
    listed = subprocess.run([*cli, "list", "--state", "COMPLETED"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert str(job_id) in listed.stdout
    missing = subprocess.run([*cli, "show", str(uuid.uuid4())], env=env, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_logs_are_json_lines_with_the_standard_fields_and_no_secrets(stack):
    from tests.conftest import DOWNSTREAM_TOKEN

    base, _, api, worker = stack
    job_id = uuid.uuid4()
    requests.post(f"{base}/internal/jobs/{job_id}/start", headers=HEADERS, timeout=10)
    wait_terminal(base, job_id)
    for service in (api, worker):
        text = service.log_path.read_text()
        if service is worker:  # `celery -A tasks worker` prints its banner before logging
            text = text[text.index('{"'):]
        assert API_TOKEN not in text and DOWNSTREAM_TOKEN not in text
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines and all(line.startswith("{") for line in lines), service.name
        events = service.events()
        assert len(events) == len(lines)
        for event in events:
            assert {"timestamp", "level", "event", "job_id", "correlation_id"} <= set(event)
        job_lines = [e for e in events if e["job_id"] == str(job_id)]
        assert job_lines and all(e["correlation_id"] for e in job_lines)
        # Every line about the job carries it, Celery's own lines included
        mentions = [e for e in events if str(job_id) in json.dumps(e.get("message", ""))]
        assert all(e["job_id"] == str(job_id) for e in mentions), mentions
    assert api.has_event("api.request", job_id=str(job_id), method="POST", status=202)


def test_flower_watches_the_workers(stack, log_dir):
    from tests.support.processes import Service

    base, env, _, worker = stack
    port = free_port()
    flower = Service("flower", [sys.executable, "-m", "celery", "-A", "tasks", "flower",
                                f"--port={port}", "--address=127.0.0.1"],
                     {**env, "FLOWER_UNAUTHENTICATED_API": "true"}, log_dir)
    try:
        def workers() -> dict:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/api/workers?refresh=1",
                                        timeout=5)
            except requests.RequestException:
                return {}
            return response.json() if response.ok else {}

        seen = wait_for(workers, 60, "Flower to list the workers", interval=0.5)
        assert any(name.startswith("e2e-worker@") for name in seen)

        # And it sees the stage tasks of the jobs that run while it watches: the workers
        # send no task events until Flower asks them to, which it does by itself (a job
        # started before its request reaches the workers is not shown, so jobs are
        # started until one is)
        started: list[str] = []

        def a_job_in_flower() -> bool:
            job_id = str(uuid.uuid4())
            assert requests.post(f"{base}/internal/jobs/{job_id}/start", json={"input": {}},
                                 headers=HEADERS, timeout=10).status_code == 202
            started.append(job_id)
            wait_terminal(base, job_id)
            tasks = requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).json()
            return any(job in str(task.get("args")) for task in tasks.values()
                       for job in started)

        wait_for(a_job_in_flower, 60, "Flower to show a job's stage tasks", interval=0.5)
    finally:
        flower.stop()
