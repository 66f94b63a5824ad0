"""The command line as a user meets it: help everywhere, one clear line for a bad setting
(exit 2), for `orchestrator …` and `celery -A tasks …` alike. Unreachable services and
.env: test_startup.py, test_dotenv.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "orchestrator")
CELERY = str(Path(sys.executable).parent / "celery")
COMMANDS = [[], ["migrate"], ["api"], ["worker"], ["recover"], ["downstream"], ["up"],
            ["demo"], ["jobs"], ["jobs", "list"], ["jobs", "show"], ["jobs", "fail"],
            ["jobs", "redrive"], ["jobs", "prune"], ["unlock"]]


@pytest.fixture(autouse=True)
def _in_an_empty_directory(tmp_path, monkeypatch):
    """Commands read .env of their working directory: run them where there is none."""
    monkeypatch.chdir(tmp_path)


def run(*args: str, env: dict[str, str] | None = None,
        program: str = CLI) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DATABASE_", "REDIS_", "ORCHESTRATOR_", "PLANNING_",
                                  "CELERY_", "STARTUP_"))}
    return subprocess.run([program, *args], env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(("command", "env", "variable"), [
    (["api"], {}, "DATABASE_URL"),
    (["api"], {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"},
     "ORCHESTRATOR_API_TOKENS"),
    (["worker"], {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x",
                  "PLANNING_TIMEOUT": "soon"}, "PLANNING_TIMEOUT"),
    (["migrate"], {"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
    (["recover"], {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x",
                   "RETRY_JITTER": "sometimes"}, "RETRY_JITTER"),
    (["jobs", "list"], {"LOCK_TTL": "-1"}, "LOCK_TTL"),
    (["worker"], {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x",
                  "STARTUP_TIMEOUT": "soon"}, "STARTUP_TIMEOUT"),
    (["jobs", "list"], {"STARTUP_TIMEOUT": "-1"}, "STARTUP_TIMEOUT"),
    (["worker"], {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x",
                  "WORKER_PROCESSES": "many"}, "WORKER_PROCESSES"),
    (["worker", "--processes", "0"], {"DATABASE_URL": "postgresql://x/y",
                                      "REDIS_URL": "redis://x"}, "--processes"),
    (["worker", "-P", "prefork", "--processes", "2"],
     {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}, "--processes"),
    # URLs of the right scheme that their client cannot read: at once, not after a wait
    (["jobs", "list"], {"DATABASE_URL": "postgresql://u@127.0.0.1:99999/db",
                        "STARTUP_TIMEOUT": "60"}, "DATABASE_URL"),
    (["worker"], {"DATABASE_URL": "postgresql://u@127.0.0.1/db?sslmode=bogus",
                  "REDIS_URL": "redis://x", "STARTUP_TIMEOUT": "60"}, "DATABASE_URL"),
])
def test_a_wrong_setting_exits_nonzero_with_one_line_naming_it(command, env, variable):
    result = run(*command, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


@pytest.mark.parametrize("stages", ["planning,pricing", "PLANNING,,Nope", ","])
def test_an_unknown_stage_for_a_worker_exits_2_naming_it(stages):
    result = run("worker", "--stages", stages,
                 env={"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    named = stages.split(",")[-1].lower() or "(none)"
    assert len(lines) == 1 and "--stages" in lines[0] and named in lines[0], result.stderr


CELERY_ENV = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}


@pytest.mark.parametrize("command", ["worker", "flower"])
@pytest.mark.parametrize(("env", "variable"), [
    ({}, "DATABASE_URL"),
    ({**CELERY_ENV, "PLANNING_TIMEOUT": "soon"}, "PLANNING_TIMEOUT"),
    ({**CELERY_ENV, "STARTUP_TIMEOUT": "later"}, "STARTUP_TIMEOUT"),
])
def test_celery_with_a_wrong_setting_exits_2_with_one_line_naming_it(command, env, variable):
    result = run("-A", "tasks", command, env=env, program=CELERY)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_celery_flower_with_a_broker_url_kombu_cannot_read_exits_2():
    env = {**CELERY_ENV, "CELERY_BROKER_URL": "amqp://127.0.0.1:abc//", "STARTUP_TIMEOUT": "60"}
    result = run("-A", "tasks", "flower", env=env, program=CELERY)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CELERY_BROKER_URL" in lines[0], result.stderr


def test_celery_help_needs_no_service():
    # Redis at "x" does not resolve: the help is printed without waiting for it.
    result = run("-A", "tasks", "worker", "--help", env={**CELERY_ENV, "STARTUP_TIMEOUT": "60"},
                 program=CELERY)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
