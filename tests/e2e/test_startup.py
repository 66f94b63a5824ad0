"""Start-up against services that cannot be reached, as an operator meets it: every command
(`orchestrator …`, `celery -A tasks …`) gives up within STARTUP_TIMEOUT with one line on
stderr naming the variable (its password redacted) and exit 69, and leaves nothing
running; a service that comes up late is waited for; `migrate` creates a missing database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.conftest import API_TOKEN
from tests.support.processes import Service
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ORCHESTRATOR = str(BIN / "orchestrator")
CELERY = str(BIN / "celery")
EXIT_UNREACHABLE = 69
PASSWORD = "s3cret-pw"
JOB = str(uuid.uuid4())


def closed_port() -> int:
    """A port nothing listens on: bound by us a moment ago, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def url_at(port: int, scheme: str) -> str:
    return {"pg": f"postgresql://orch:{PASSWORD}@127.0.0.1:{port}/orchestrator",
            "redis": f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
            "amqp": f"amqp://orch:{PASSWORD}@127.0.0.1:{port}//"}[scheme]


@pytest.fixture
def base_env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """A clean environment on the session's real services, a short start-up wait."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_", "ORCHESTRATOR_", "CELERY_",
                                 "STARTUP_", "PLANNING_"))}
    tag = uuid.uuid4().hex[:8]
    return {**keep, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "ORCHESTRATOR_API_TOKENS": API_TOKEN, "CELERY_QUEUE": f"orch-startup-{tag}",
            "LOCK_KEY_PREFIX": f"orch-startup-{tag}:", "STARTUP_TIMEOUT": "1",
            "ORCHESTRATOR_PORT": str(closed_port())}


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in a session of its own; afterwards, nothing of it may be left."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)  # a guard against a hang, not a measure
    finally:
        leftover = _group_alive(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert not leftover, f"{argv} left processes running"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_one_line_naming(result: subprocess.CompletedProcess[str], variable: str,
                           port: int) -> None:
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{variable}=" in lines[0] and f":{port}" in lines[0], lines[0]
    assert PASSWORD not in lines[0] and ":***@" in lines[0], lines[0]


# (argv, the variable pointed at the dead port, its scheme): each command's first check.
COMMANDS = [
    ([ORCHESTRATOR, "migrate"], "DATABASE_URL", "pg"),
    ([ORCHESTRATOR, "api"], "DATABASE_URL", "pg"),
    ([ORCHESTRATOR, "api"], "CELERY_BROKER_URL", "amqp"),
    ([ORCHESTRATOR, "api"], "REDIS_URL", "redis"),  # the broker, by default
    ([ORCHESTRATOR, "worker"], "DATABASE_URL", "pg"),
    ([ORCHESTRATOR, "worker"], "REDIS_URL", "redis"),
    ([ORCHESTRATOR, "worker"], "CELERY_BROKER_URL", "amqp"),
    ([ORCHESTRATOR, "recover"], "REDIS_URL", "redis"),
    ([ORCHESTRATOR, "recover"], "CELERY_BROKER_URL", "amqp"),
    ([ORCHESTRATOR, "jobs", "list"], "DATABASE_URL", "pg"),
    ([ORCHESTRATOR, "jobs", "show", JOB], "DATABASE_URL", "pg"),
    ([CELERY, "-A", "tasks", "worker"], "DATABASE_URL", "pg"),
    ([CELERY, "-A", "tasks", "worker"], "REDIS_URL", "redis"),
    ([CELERY, "-A", "tasks", "flower"], "REDIS_URL", "redis"),
    ([CELERY, "-A", "tasks", "flower"], "CELERY_BROKER_URL", "amqp"),
]


def _ids(case: tuple[list[str], str, str]) -> str:
    argv, variable, _ = case
    return " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)
                    if a != JOB) + f" {variable}"


@pytest.mark.parametrize("case", COMMANDS, ids=_ids)
def test_a_service_refusing_connections_ends_start_up_with_one_line(case, base_env, tmp_path):
    # Given a command whose service is at a port nothing listens on
    argv, variable, scheme = case
    port = closed_port()
    # When it starts
    result = run(argv, {**base_env, variable: url_at(port, scheme)}, tmp_path)
    # Then it waits STARTUP_TIMEOUT, and gives up with one line naming the variable
    assert_one_line_naming(result, variable, port)


@pytest.mark.parametrize("case", [
    ([ORCHESTRATOR, "worker"], "REDIS_URL", "redis"),
    ([ORCHESTRATOR, "jobs", "list"], "DATABASE_URL", "pg"),
    ([ORCHESTRATOR, "api"], "CELERY_BROKER_URL", "amqp"),
    ([CELERY, "-A", "tasks", "flower"], "REDIS_URL", "redis"),
], ids=_ids)
def test_a_service_that_never_answers_ends_start_up_too(case, base_env, tmp_path, silent_port):
    argv, variable, scheme = case
    result = run(argv, {**base_env, variable: url_at(silent_port, scheme)}, tmp_path)
    assert_one_line_naming(result, variable, silent_port)


def test_only_what_the_command_uses_is_checked(base_env, tmp_path):
    # `jobs` reads PostgreSQL only: a dead Redis and broker do not stop it.
    env = {**base_env, "REDIS_URL": url_at(closed_port(), "redis"),
           "CELERY_BROKER_URL": url_at(closed_port(), "amqp")}
    result = run([ORCHESTRATOR, "jobs", "list", "--limit", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_worker_on_a_missing_database_says_so_and_how(base_env, database_url, tmp_path):
    missing = _with_database(database_url, f"orch_missing_{uuid.uuid4().hex[:8]}")
    result = run([ORCHESTRATOR, "worker"], {**base_env, "DATABASE_URL": missing}, tmp_path)
    assert result.returncode == EXIT_UNREACHABLE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL=" in lines[0], result.stderr
    assert "does not exist" in lines[0] and "orchestrator migrate" in lines[0]


def test_a_worker_waits_for_a_redis_that_comes_up_late(base_env, private_database, tmp_path,
                                                       log_dir):
    # Given a worker started before its Redis, with time to wait for it
    redis = ThrowawayRedis(tmp_path)
    env = {**base_env, "DATABASE_URL": private_database, "REDIS_URL": redis.url,
           "STARTUP_TIMEOUT": "60", "WORKER_CONCURRENCY": "1"}
    with socket.socket() as door:
        door.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        door.bind(("127.0.0.1", redis.port))
        door.listen(1)
        worker = Service("late-redis-worker", [ORCHESTRATOR, "worker", "--without-gossip",
                                               "--without-mingle"], env, log_dir)
        try:
            # When its first try has knocked (and been turned away: no Redis there yet)
            door.settimeout(30)
            knock, _ = door.accept()
            knock.close()
        except BaseException:
            worker.stop()
            raise
    try:
        redis.start()
        # Then it carries on, and is ready once Redis answers
        worker.wait_event("worker.ready", timeout=60)
    finally:
        worker.stop()
        redis.kill()


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _admin(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url, connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, args or None)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def test_migrate_creates_a_missing_database_and_says_so(base_env, database_url, tmp_path):
    # Given a server without the database DATABASE_URL names (a name that needs quoting)
    name = f"Orch-Created-{uuid.uuid4().hex[:8]}"
    target = _with_database(database_url, name)
    try:
        # When migrate runs
        result = run([ORCHESTRATOR, "migrate"], {**base_env, "DATABASE_URL": target}, tmp_path)
        # Then the database exists, migrated, and the output says it was created
        assert result.returncode == 0, result.stderr
        assert f"created database '{name}'" in result.stdout
        assert _admin(target, "SELECT count(*) FROM alembic_version") == [(1,)]
        again = run([ORCHESTRATOR, "migrate"], {**base_env, "DATABASE_URL": target}, tmp_path)
        assert again.returncode == 0 and "created" not in again.stdout, again.stderr
    finally:
        _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_says_how_when_it_may_not_create_the_database(base_env, database_url,
                                                              tmp_path):
    role = f"orch_nocreate_{uuid.uuid4().hex[:8]}"
    try:
        _admin(database_url, f"CREATE ROLE {role} LOGIN NOCREATEDB")
    except psycopg2.Error as exc:
        pytest.skip(f"the test server does not let us create a role: {exc}")
    try:
        parts = urlsplit(_with_database(database_url, f"orch_missing_{role}"))
        target = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        result = run([ORCHESTRATOR, "migrate"], {**base_env, "DATABASE_URL": target}, tmp_path)
        assert result.returncode == EXIT_UNREACHABLE
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "DATABASE_URL=" in lines[0], result.stderr
        assert "CREATE DATABASE" in lines[0] and "permission denied" in lines[0]
    finally:
        _admin(database_url, f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database that exists but was never migrated; dropped afterwards."""
    name = f"orch_empty_{uuid.uuid4().hex[:8]}"
    _admin(database_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(database_url, name)
    finally:
        _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("argv", [[ORCHESTRATOR, "worker"], [ORCHESTRATOR, "recover"],
                                  [ORCHESTRATOR, "api"], [ORCHESTRATOR, "jobs", "list"],
                                  [CELERY, "-A", "tasks", "worker"]], ids=" ".join)
def test_a_database_never_migrated_says_to_migrate(argv, base_env, empty_database, tmp_path):
    result = run(argv, {**base_env, "DATABASE_URL": empty_database}, tmp_path)
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL=" in lines[0], result.stderr
    assert "no schema yet: run `orchestrator migrate`" in lines[0]


def test_a_database_behind_this_version_says_to_migrate(base_env, empty_database, tmp_path):
    from db.migrate import upgrade

    upgrade(empty_database, "0003")
    result = run([ORCHESTRATOR, "jobs", "list"], {**base_env, "DATABASE_URL": empty_database},
                 tmp_path)
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    assert "the schema is at revision 0003 and this version needs" in result.stderr
    # and once migrated (as a migration Job would, meanwhile), the same command runs
    upgrade(empty_database)
    done = run([ORCHESTRATOR, "jobs", "list"], {**base_env, "DATABASE_URL": empty_database},
               tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "no jobs", done.stderr


def test_a_database_migrated_past_this_version_is_used(base_env, empty_database, tmp_path):
    # Upgrades run migrations first, then the workers, then the API: until they are
    # replaced, the running version meets the next version's schema (a revision it does
    # not know) and must go on working
    from db.migrate import upgrade

    upgrade(empty_database)
    _admin(empty_database, "UPDATE alembic_version SET version_num = 'f00000000000'")
    result = run([ORCHESTRATOR, "jobs", "list"], {**base_env, "DATABASE_URL": empty_database},
                 tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "no jobs", result.stderr
