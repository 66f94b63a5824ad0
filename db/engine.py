"""The SQLAlchemy engine, built from settings when a process needs it (never at import)."""

from __future__ import annotations

import select
from typing import Any

import psycopg2
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

#: The errors that mean "PostgreSQL is unavailable for now" — a connection refused, lost
#: or not to be had (the server's ``max_connections``, the pool's ceiling), a statement
#: cancelled or a deadlock — as raised by psycopg2 itself (the hot statements and every
#: checkout, ``db.uow``) or wrapped by SQLAlchemy. Any other database error is a fault of
#: ours, never blamed on PostgreSQL.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg2.OperationalError, psycopg2.InterfaceError,
    OperationalError, InterfaceError, PoolTimeout)


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://…`` as SQLAlchemy should read it: with the psycopg2 driver named
    (SQLAlchemy 2.1 would otherwise pick psycopg 3, which is not installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg2://" + database_url[len(prefix):]
    return database_url


def libpq_url(database_url: str) -> str:
    """``DATABASE_URL`` as libpq (psycopg2 itself) reads it: without SQLAlchemy's driver
    suffix."""
    for prefix in ("postgresql+psycopg2://", "postgres+psycopg2://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix):]
    return database_url


def make_engine(database_url: str, *, pool_size: int = 5,
                max_connections: int | None = None) -> Engine:
    """An engine whose pool checks each connection as it hands it out
    (:func:`discard_if_closed`), so a PostgreSQL restart costs a reconnection rather than
    an error in a stage. It keeps ``pool_size`` connections open and opens up to
    ``max_connections`` in all (default: ``pool_size`` + 5) under a burst."""
    pool_size = min(pool_size, max_connections or pool_size)
    engine = create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max((max_connections or pool_size + 5) - pool_size, 0),
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "job-orchestrator"},
    )
    event.listen(engine, "checkout", discard_if_closed)
    return engine


def discard_if_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """The pool's check of a connection it hands out (SQLAlchemy's documented checkout
    hook: raising DisconnectionError makes the pool throw the connection away and hand
    out a fresh one).

    An idle connection that can be read from has been spoken to by the server, which
    only happens when it ends the session: a restart, a crash, ``pg_terminate_backend``,
    an idle timeout (a FATAL message, then the end of the stream). So the check is one
    non-blocking poll of its socket, where ``pool_pre_ping`` sends ``SELECT 1`` and waits
    for the answer: two statements a stage, each a round trip and ≈ 4 % of a worker's CPU
    under a burst, for the same cases caught. (A connection that is readable for another
    reason, a NOTIFY say, is thrown away too: we LISTEN to nothing, and a new session
    costs only its start.) A server that vanished without closing (its host powered off)
    is caught by neither: the statement then waits for ``connect_timeout``/TCP."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        spoke = bool(poller.poll(0))
    except (psycopg2.InterfaceError, OSError, ValueError) as exc:  # closed already
        raise DisconnectionError(f"connection unusable: {exc!r}") from exc
    if spoke:
        raise DisconnectionError("PostgreSQL ended this session (its socket is readable "
                                 "while idle)")


def connection_room(engine: Engine) -> tuple[int, int]:
    """``(usable, in_use)``: the connections PostgreSQL admits to non-superusers
    (``max_connections`` less ``superuser_reserved_connections``) and the client
    connections open now, this one included."""
    with engine.connect() as connection:
        usable, in_use = connection.execute(text(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )).one()
    return int(usable), int(in_use)
