"""`.env`: every command reads the one in its working directory, the environment wins over
it, a line it cannot read is an error naming it, and compose passes the same file on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_startup import (
    CELERY,
    ORCHESTRATOR,
    assert_one_line_naming,
    closed_port,
    run,
    url_at,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The process environment without any of the product's settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_", "ORCHESTRATOR_", "CELERY_",
                                 "STARTUP_", "PLANNING_", "LOG_"))}


def test_a_value_in_dotenv_is_used(clean_env, database_url, tmp_path):
    # Given DATABASE_URL only in .env
    (tmp_path / ".env").write_text(f"# the operator's settings\nDATABASE_URL={database_url}\n")
    # When an operator lists jobs from that directory
    result = run([ORCHESTRATOR, "jobs", "list", "--limit", "1"], clean_env, tmp_path)
    # Then the database of .env is read
    assert result.returncode == 0, result.stderr


def test_the_environment_wins_over_dotenv(clean_env, database_url, tmp_path):
    (tmp_path / ".env").write_text(f"DATABASE_URL={url_at(closed_port(), 'pg')}\n"
                                   "STARTUP_TIMEOUT=1\n")
    env = {**clean_env, "DATABASE_URL": database_url}
    result = run([ORCHESTRATOR, "jobs", "list", "--limit", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["worker", "flower"])
def test_celery_reads_dotenv_and_the_environment_wins(command, clean_env, database_url,
                                                      tmp_path):
    # Given a Redis nobody answers at in .env, and a bad STARTUP_TIMEOUT there that the
    # environment overrides
    port = closed_port()
    (tmp_path / ".env").write_text(f"DATABASE_URL={database_url}\n"
                                   f"REDIS_URL={url_at(port, 'redis')}\n"
                                   "STARTUP_TIMEOUT=soon\n")
    # When `celery -A tasks …` starts there
    result = run([CELERY, "-A", "tasks", command], {**clean_env, "STARTUP_TIMEOUT": "1"},
                 tmp_path)
    # Then it waited (the environment's STARTUP_TIMEOUT) for the Redis of .env
    assert_one_line_naming(result, "REDIS_URL", port)


def test_a_line_dotenv_cannot_read_is_an_error_naming_it(clean_env, tmp_path):
    (tmp_path / ".env").write_text("LOG_LEVEL=INFO\nthis is not a setting\n")
    for argv in ([ORCHESTRATOR, "jobs", "list"], [CELERY, "-A", "tasks", "worker"]):
        result = run(argv, clean_env, tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and ".env" in lines[0] and "line 2" in lines[0], result.stderr


def test_the_example_is_a_dotenv_every_command_reads(clean_env, database_url, tmp_path):
    # `cp .env.example .env`, then set what you need in it or in the environment
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    env = {**clean_env, "DATABASE_URL": database_url}
    result = run([ORCHESTRATOR, "jobs", "list", "--limit", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    unset = run([ORCHESTRATOR, "worker"], env, tmp_path)  # its REDIS_URL= is empty
    assert unset.returncode == 2 and "REDIS_URL" in unset.stderr, unset.stderr


def test_compose_passes_the_same_file_to_every_orchestrator_container():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert set(ours) >= {"migrate", "api", "worker", "downstream", "flower"}
    for name, service in ours.items():
        assert {"path": ".env", "required": False} in service["env_file"], name
        # What wires the containers together wins over .env (written for a local run).
        assert service["environment"]["ORCHESTRATOR_HOST"] == "0.0.0.0", name
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://"), name


def test_orchestrator_env_file_names_another_file_or_none(clean_env, database_url, tmp_path):
    (tmp_path / ".env").write_text("LOG_LEVEL=NOISY\n")  # would be a bad setting if read
    other = tmp_path / "prod.env"
    other.write_text("LOCK_TTL=-1\n")
    env = {**clean_env, "DATABASE_URL": database_url}

    def jobs_list(env_file: str):
        return run([ORCHESTRATOR, "jobs", "list"], {**env, "ORCHESTRATOR_ENV_FILE": env_file},
                   tmp_path)

    none = jobs_list("")
    assert none.returncode == 0, none.stderr
    named = jobs_list(str(other))
    assert named.returncode == 2 and "LOCK_TTL" in named.stderr
    missing = jobs_list(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "ORCHESTRATOR_ENV_FILE" in missing.stderr
