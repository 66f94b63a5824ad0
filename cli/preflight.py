"""Start-up checks: wait, up to ``STARTUP_TIMEOUT`` seconds, for the services a command
needs, then give up with one line naming the variable to fix.

A service that comes up a few seconds late is fine (compose starts everything at once),
so a failure that time may cure (refused, timed out, "the database system is starting
up") is tried again with a growing pause, by Kombu's ``retry_over_time`` (the loop behind
``Connection.ensure_connection``); one that it cannot (a wrong password, a database or
user that does not exist) ends the wait at once. Each try has its own short timeout, so a
server that accepts connections and never answers holds the command at most a second or
two past the wait.

Only start-up is checked: once a command runs, an outage is its own business (workers
ride it out, see tests/integration/test_outages.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cli.startup import Unavailable
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, broker_from_redis, redact_url

POSTGRES, REDIS, BROKER = "PostgreSQL", "Redis", "broker"
ATTEMPT_TIMEOUT = 5.0  # the longest one try may take
MIN_ATTEMPT = 1.0  # the shortest, even at the deadline (libpq makes it 2 s)
# PostgreSQL refuses with FATAL for good reasons (password, database, role) and for
# passing ones, which are worth waiting for:
_PG_PASSING = ("starting up", "shutting down", "in recovery mode", "too many clients",
               "not yet accepting connections")


class MissingDatabase(Unavailable):
    """The PostgreSQL server answers but has no database of DATABASE_URL's name."""


class _TryAgain(Exception):
    """A try failed in a way time may cure; ``reason`` says how, in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _NotMigrated(_TryAgain):
    """PostgreSQL answers, but its schema is not this version's yet."""


class _Refused(Exception):
    """A try failed in a way waiting cannot cure."""


@dataclass(frozen=True)
class Dependency:
    what: str
    variable: str
    url: str
    probe: Callable[[str, float], None]  # one try within the seconds given

    def where(self) -> str:
        return f"{self.what} at {self.variable}={redact_url(self.url)}"


def wait_for_services(settings: Settings, needs: Sequence[str], *, schema: bool = True
                      ) -> None:
    """Return once every service of ``needs`` (POSTGRES, REDIS, BROKER) answers, and
    PostgreSQL's schema is migrated unless ``schema`` is False (``migrate`` itself); raise
    :class:`Unavailable` (one line) when one does not within ``settings.startup_timeout``
    seconds, or :class:`MissingDatabase`, or ConfigError for a URL no client can read."""
    started = time.monotonic()
    deadline = started + settings.startup_timeout
    for dependency in dependencies(settings, needs, schema=schema):
        _wait(dependency, started, deadline, settings.startup_timeout)


def dependencies(settings: Settings, needs: Sequence[str], *, schema: bool = True
                 ) -> list[Dependency]:
    """The services to check, each with the variable that points at it. The broker is
    checked on its own only when it is not the Redis already checked."""
    found = []
    if POSTGRES in needs:
        if not settings.database_url:
            raise ConfigError("DATABASE_URL", "is not set")
        found.append(Dependency(POSTGRES, "DATABASE_URL", settings.database_url,
                                probe_migrated if schema else probe_postgres))
    if REDIS in needs:
        if not settings.redis_url:
            raise ConfigError("REDIS_URL", "is not set")
        found.append(Dependency(REDIS, "REDIS_URL", settings.redis_url, probe_redis))
    if BROKER in needs:
        if not settings.broker_url:
            raise ConfigError("REDIS_URL", "is not set (nor CELERY_BROKER_URL)")
        via_redis = settings.broker_url == broker_from_redis(settings.redis_url)
        if not (via_redis and REDIS in needs):
            found.append(Dependency(
                REDIS if via_redis else "the broker",
                "REDIS_URL" if via_redis else "CELERY_BROKER_URL",
                settings.broker_url, probe_broker))
    return found


def _wait(dependency: Dependency, started: float, deadline: float, timeout: float) -> None:
    from kombu.utils.functional import retry_over_time

    def attempt() -> None:
        left = deadline - time.monotonic()
        try:
            dependency.probe(dependency.url, min(ATTEMPT_TIMEOUT, max(left, MIN_ATTEMPT)))
        except _Refused as exc:
            raise Unavailable(f"cannot connect to {dependency.where()}: {exc}") from None
        except ValueError as exc:  # a URL the client cannot read
            raise ConfigError(dependency.variable, str(exc)) from None

    def pause(exc: _TryAgain, intervals: Iterator[float], retries: int) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            waited = time.monotonic() - started
            what = (f"{dependency.where()} is not ready" if isinstance(exc, _NotMigrated)
                    else f"cannot reach {dependency.where()}")
            raise Unavailable(f"{what}: {exc.reason} (tried for {waited:.0f} s, "
                              f"STARTUP_TIMEOUT={timeout:g})") from None
        return min(next(intervals), left)  # the last try at the deadline

    retry_over_time(attempt, _TryAgain, errback=pause, interval_start=0.2, interval_step=0.4,
                    interval_max=2.0)


def first_line(exc: BaseException) -> str:
    """The gist of a client's error: its first line, without the address it repeats."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if " failed: " in text and text.startswith("connection to server"):
        text = text.split(" failed: ", 1)[1]  # libpq: 'connection to server at "h", port p'
    text = re.sub(r"^Error -?\d+ connecting to \S+?\.\s+", "", text)  # redis-py
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)  # OSError
    text = text.removeprefix("FATAL:").strip().rstrip(".")
    # "Connection refused" reads as "connection refused" after a colon; "DB index…" stays.
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def probe_postgres(url: str, seconds: float) -> None:
    import psycopg2

    from db.engine import libpq_url

    try:
        psycopg2.connect(libpq_url(url), connect_timeout=max(2, int(seconds))).close()
    except psycopg2.ProgrammingError as exc:  # "invalid dsn"
        raise ValueError(first_line(exc)) from exc
    except psycopg2.OperationalError as exc:
        message, reason = str(exc), first_line(exc)
        if reason.startswith("invalid "):  # libpq's word for a bad port, sslmode, option…
            raise ValueError(reason) from exc
        if "FATAL:" not in message or any(p in message for p in _PG_PASSING):
            raise _TryAgain(reason) from exc
        if "database" in reason and reason.endswith("does not exist"):
            raise MissingDatabase(f"{POSTGRES} at DATABASE_URL={redact_url(url)}: {reason} "
                                  "(`orchestrator migrate` creates it)") from exc
        raise _Refused(reason) from exc


def probe_migrated(url: str, seconds: float) -> None:
    """``probe_postgres``, then the schema: a database not migrated to this version's
    head yet is worth waiting for (a migration Job or compose service may be running it
    now); one migrated past it (a newer version's migration ran first) is fine."""
    import psycopg2

    from db.engine import libpq_url
    from db.migrate import schema_revisions

    probe_postgres(url, seconds)
    with psycopg2.connect(libpq_url(url), connect_timeout=max(2, int(seconds))) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
        row = cur.fetchone()
        versions = []
        if row and row[0]:
            cur.execute("SELECT version_num FROM alembic_version")
            versions = [v for (v,) in cur.fetchall()]
    conn.close()
    head, known = schema_revisions()
    if not versions:
        raise _NotMigrated("the database has no schema yet: run `orchestrator migrate`")
    behind = [v for v in versions if v != head and v in known]
    if behind:
        raise _NotMigrated(f"the schema is at revision {behind[0]} and this version needs "
                        f"{head}: run `orchestrator migrate`")


def probe_redis(url: str, seconds: float) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=seconds, socket_timeout=seconds)
    try:
        client.ping()
    except redis.AuthenticationError as exc:  # a ConnectionError, but no passing one
        raise _Refused(first_line(exc)) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError too
        raise _TryAgain(first_line(exc)) from exc
    except redis.RedisError as exc:
        raise _Refused(first_line(exc)) from exc
    finally:
        client.close()


def probe_broker(url: str, seconds: float) -> None:
    """One connection to the broker as Celery will open it (Kombu, any transport)."""
    import redis
    from kombu import Connection

    options = ({"socket_connect_timeout": seconds, "socket_timeout": seconds}
               if url.startswith("redis") else {})
    connection = Connection(url, connect_timeout=seconds, transport_options=options)
    try:
        # One try: the retrying is ours, so that the wait is the same for every service.
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
    except redis.AuthenticationError as exc:
        raise _Refused(first_line(exc)) from exc
    except connection.recoverable_connection_errors as exc:
        raise _TryAgain(first_line(exc)) from exc
    except Exception as exc:  # a refused login, no such vhost: whatever the transport says
        raise _Refused(first_line(exc)) from exc
    finally:
        connection.release()
