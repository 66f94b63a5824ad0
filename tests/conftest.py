"""Session-wide real services for the integration and end-to-end tests.

Unit tests (tests/unit) need none of this and never touch the fixtures below.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.downstream_server import ScriptedDownstream
from tests.support.services import postgres_database, test_postgres, test_redis

SERVICE_FIXTURES = {"database_url", "redis_url", "downstream", "log_dir"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``-m "not integration"`` honest. pytest ignores ``pytestmark`` in a conftest.py,
    so every module under tests/integration and tests/e2e must mark itself; and a unit test
    may not use the real services."""
    problems = []
    for item in items:
        layer = Path(str(item.path)).relative_to(Path(__file__).parent).parts[0]
        marked = item.get_closest_marker("integration") is not None
        if layer in ("integration", "e2e") and not marked:
            problems.append(f"{item.nodeid}: add pytestmark = pytest.mark.integration")
        if layer == "unit" and (marked or SERVICE_FIXTURES & set(getattr(
                item, "fixturenames", ()))):
            problems.append(f"{item.nodeid}: a unit test uses the real services")
    if problems:
        raise pytest.UsageError("\n".join(sorted(set(problems))))


# A developer's own ./.env (README: `cp .env.example .env`) must not reach the processes
# the tests start from the repository: they read no .env unless a test gives them one.
os.environ["ORCHESTRATOR_ENV_FILE"] = ""

API_TOKEN = "test-token-" + uuid.uuid4().hex[:8]
DOWNSTREAM_TOKEN = "downstream-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    from db.migrate import upgrade

    with test_postgres(os.environ.get("TEST_DATABASE_URL")) as url:
        upgrade(url)
        yield url


def _migrated_database(database_url: str) -> Iterator[str]:
    from db.migrate import upgrade

    with postgres_database(database_url) as url:
        upgrade(url)
        yield url


@pytest.fixture
def private_database(database_url: str) -> Iterator[str]:
    """A migrated database of the test's own, on the same server, dropped afterwards.

    A database, a queue and a lock prefix make one deployment. Tests that start workers of
    their own get all three, so that no other worker's recovery pass (which resumes any
    stalled job of its database) takes their jobs over, and their counts stay their own.
    """
    yield from _migrated_database(database_url)


@pytest.fixture(scope="module")
def module_database(database_url: str) -> Iterator[str]:
    """:func:`private_database` shared by one module's tests."""
    yield from _migrated_database(database_url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with test_redis(os.environ.get("TEST_REDIS_URL")) as url:
        yield url


@pytest.fixture(scope="session")
def downstream() -> Iterator[ScriptedDownstream]:
    server = ScriptedDownstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def make_env(database_url: str, redis_url: str, downstream: ScriptedDownstream,
             **overrides: Any) -> dict[str, str]:
    """The environment of an orchestrator process in the tests: its own queue and lock
    prefix, the scripted downstream, short limits (all through configuration)."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_QUEUE": f"orch-test-{tag}",
        "LOCK_KEY_PREFIX": f"orch-test-{tag}:job:lock:",
        "DOWNSTREAM_TOKEN": DOWNSTREAM_TOKEN,
        "ORCHESTRATOR_API_TOKENS": f"{API_TOKEN},second-token",
        "PLANNING_TIMEOUT": "10", "PARSING_TIMEOUT": "10", "ENRICHING_TIMEOUT": "10",
        "COSTING_TIMEOUT": "10",
        "HARD_TIMEOUT_GRACE": "5",
        "RETRY_BACKOFF_BASE": "0.2", "RETRY_BACKOFF_MAX": "2", "RETRY_JITTER": "false",
        "LOCK_TTL": "6", "RECOVERY_INTERVAL": "1", "RECOVERY_STALE_AFTER": "6",
        "WORKER_CONCURRENCY": "2",
        # One process: each test's worker is one Celery worker, as each of a few is under
        # `orchestrator worker`'s supervisor (tested on its own, test_worker_processes.py).
        "WORKER_PROCESSES": "1",
        "LOG_LEVEL": "INFO",
        **downstream.env(),
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture(scope="session")
def orchestrator_env(database_url: str, redis_url: str,
                     downstream: ScriptedDownstream) -> dict[str, str]:
    return make_env(database_url, redis_url, downstream)
