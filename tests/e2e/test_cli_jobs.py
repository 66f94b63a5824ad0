"""`orchestrator jobs …` and `--version` as an operator runs them, against a real worker,
PostgreSQL and a service that hangs: argument errors as argument errors, the help's
columns, errors whole in `jobs show`, and `jobs fail` cancelling a stage in flight."""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import make_env
from tests.integration.conftest import Api, attempt_run
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker, wait_for

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "orchestrator")
# A permanent error (HTTP 400) whose text is far longer than a table column.
LONG = ("the plan names a provider alias nobody configured: "
        + " ".join(f"module.m{i}.aws_instance.web" for i in range(6)))


@pytest.fixture(scope="module")
def stack(module_database, redis_url, downstream, log_dir):
    # ENRICHING's timeout is far beyond any wait here: only a cancel can end its call.
    env = make_env(module_database, redis_url, downstream, ENRICHING_TIMEOUT=600)
    worker = start_worker("cli-jobs-worker", env, log_dir)
    yield env, Api(create_app(Settings.from_env(env)).test_client()), worker
    worker.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_version_is_the_installed_package_version():
    result = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"orchestrator, version {importlib.metadata.version('job-orchestrator')}")


def test_an_unknown_state_is_an_argument_error_not_a_configuration_error(stack):
    env, _, _ = stack
    result = cli(env, "jobs", "list", "--state", "BOGUS")
    assert result.returncode == 2
    assert "Invalid value for '--state'" in result.stderr
    assert "configuration" not in result.stderr
    assert cli(env, "jobs", "list", "--state", "failed").returncode == 0


def test_list_shows_the_columns_its_help_promises_and_show_gives_errors_whole(
        stack, downstream):
    env, api, _ = stack
    job_id = uuid.uuid4()
    downstream.script(job_id, "PARSING", Reply(400, {"error": LONG}))
    api.start(job_id)
    job = api.wait_state(job_id, "FAILED")
    assert LONG in job["error_message"]

    listed = cli(env, "jobs", "list", "--state", "FAILED", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[0].split()
    assert header == ["JOB", "ID", "STATE", "RETRIES", "AGE", "ERROR"]
    helped = cli(env, "jobs", "list", "--help").stdout
    assert "id, state, retries, age" in " ".join(helped.split())
    row = next(line for line in listed.stdout.splitlines() if str(job_id) in line)
    shown_error = row.split(None, 4)[4]
    # cut at a word, and said to be cut; every word shown is one of the message's
    assert shown_error.endswith(" …") and len(shown_error) <= 60
    assert set(shown_error[:-2].split()) <= set(job["error_message"].split())

    shown = cli(env, "jobs", "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    # the job's error and the attempt's, whole, wrapped over several lines
    job_error = [lines[i] for i in range(len(lines)) if lines[i].startswith("error ")]
    start = lines.index(job_error[0])
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" " * 11))
    assert " ".join(line.split(None, 1)[1] if n == 0 else line.strip()
                    for n, line in enumerate(lines[start:end])) == job["error_message"]
    assert end - start > 1
    attempt_error = next(i for i, line in enumerate(lines) if line.startswith("    error: "))
    end = next((i for i in range(attempt_error + 1, len(lines))
                if not lines[i].startswith(" " * 11)), len(lines))
    assert " ".join(line.replace("error:", "", 1).strip()
                    for line in lines[attempt_error:end]) == job["error_message"]


def test_jobs_fail_cancels_the_stage_in_flight_and_says_who(stack, downstream):
    env, api, worker = stack
    job_id = uuid.uuid4()
    never = threading.Event()
    downstream.script(job_id, "ENRICHING", Reply(release=never, hang_for=600))
    try:
        api.start(job_id)
        call = downstream.wait_call(job_id, "ENRICHING", 1, timeout=60)
        # When the operator fails it from the command line
        result = cli(env, "jobs", "fail", str(job_id), "--message", "wrong account")
        assert result.returncode == 0, result.stderr
        who = f"failed by operator via the CLI ({getpass.getuser()}@{socket.gethostname()})"
        assert result.stdout.strip() == f"job {job_id}: ENRICHING → FAILED ({who})"
        # Then the call is cut, the run writes nothing, and the worker says who and why
        downstream.wait_ended(call, timeout=60)
        run = wait_for(lambda: attempt_run(worker, job_id, "ENRICHING", 1), 60,
                       "the cancelled attempt's run to end")
    finally:
        never.set()
    assert call.disconnected_at is not None and call.replied_at is None
    assert [(e["cancelled_by"], e["error"]) for e in run
            if e["event"] == "stage.cancelled"] == [(who, "wrong account")], run
    job = api.job(job_id)
    assert (job["current_state"], job["error_message"]) == ("FAILED", "wrong account")
    assert job["transitions"][-1]["reason"] == who
    assert job["stages"][-1]["error_message"] == "cancelled"
    assert not downstream.calls_for(job_id, "COSTING")

    # A job that has ended, an unknown job and an empty message are refused, each clearly
    again = cli(env, "jobs", "fail", str(job_id), "-m", "again")
    assert again.returncode == 1 and f"job {job_id} is already FAILED" in again.stderr
    unknown = uuid.uuid4()
    missing = cli(env, "jobs", "fail", str(unknown), "-m", "x")
    assert missing.returncode == 1 and f"job {unknown} not found" in missing.stderr
    empty = cli(env, "jobs", "fail", str(job_id), "-m", "  ")
    assert empty.returncode == 2
    assert "Invalid value for '-m' / '--message': must be 1 to 4096" in empty.stderr
    assert api.job(job_id)["error_message"] == "wrong account"


def test_jobs_redrive_runs_a_failed_job_again_reusing_what_succeeded(stack, downstream):
    env, api, _ = stack
    old = uuid.uuid4()
    downstream.script(old, "COSTING", Reply(400, {"error": "no such currency"}))
    api.start(old, {"sample": "web-stack"})
    api.wait_state(old, "FAILED", timeout=120)
    new = uuid.uuid4()

    result = cli(env, "jobs", "redrive", str(old), "--new-id", str(new))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"job {old} redriven as {new} (PLANNING; resumes at "
                                     "COSTING)")
    job = api.wait_state(new, "COMPLETED", "FAILED", timeout=120)
    assert job["current_state"] == "COMPLETED" and job["redriven_from"] == str(old)
    assert [c.stage for c in downstream.calls_for(new)] == ["COSTING"]
    again = cli(env, "jobs", "redrive", str(old), "--new-id", str(new))
    assert again.returncode == 0 and "already redriven as" in again.stdout
    refused = cli(env, "jobs", "redrive", str(new))
    assert refused.returncode == 1
    assert f"job {new} is COMPLETED; only a FAILED job can be redriven" in refused.stderr
    assert f"redrives   {new}" in cli(env, "jobs", "show", str(old)).stdout
    shown = cli(env, "jobs", "show", str(new)).stdout
    assert f"redrive of {old}" in shown
    assert shown.count(f"reused from {old}") == 3  # PLANNING, PARSING, ENRICHING
