"""The SQLAlchemy engine, built from settings when a process needs it (never at import)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, text


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
    """An engine whose pool checks connections before use, so a PostgreSQL restart costs
    one failed ping per stale connection rather than an error in a stage. It keeps
    ``pool_size`` connections open and opens up to ``max_connections`` in all (default:
    ``pool_size`` + 5) under a burst."""
    pool_size = min(pool_size, max_connections or pool_size)
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max((max_connections or pool_size + 5) - pool_size, 0),
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "job-orchestrator"},
    )


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
