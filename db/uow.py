"""The unit of work: one transaction around a block of repository calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg2
from sqlalchemy import Engine

from db.repository import JobRepository


class PostgresUnitOfWork:
    """``with uow() as jobs:`` opens a transaction; it commits when the block ends cleanly
    and rolls back when it raises. Callable, so it fits :data:`orchestrator.ports.UnitOfWork`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        # The same pool, each statement committed by itself: psycopg2's autocommit is a
        # client-side switch, so neither setting nor resetting it costs a round trip.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def __call__(self, *, single: bool = False) -> Iterator[JobRepository]:
        if single:
            # The connection is checked out when the block's statement needs it, as the
            # statement runs: SQLAlchemy's, or the pool's own for a psycopg2 statement
            with ExitStack() as stack:
                yield JobRepository(
                    lazy=lambda: stack.enter_context(self._autocommit.connect()),
                    lazy_driver=lambda: stack.enter_context(self._driver_connection()))
            return
        with self.engine.begin() as connection:
            yield JobRepository(connection)

    @contextmanager
    def _driver_connection(self) -> Iterator[Any]:
        """psycopg2's connection, checked out of the engine's pool (checked as every
        checkout is, by ``db.engine.discard_if_closed``) and in autocommit for the block;
        back in the pool afterwards, or thrown away if it broke. What ``engine.connect()``
        with the AUTOCOMMIT isolation level does, without SQLAlchemy's Connection around
        it and its isolation level bookkeeping."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        assert connection is not None
        try:
            connection.autocommit = True
            try:
                yield connection
            finally:
                if not connection.closed:
                    connection.autocommit = False
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if connection.closed:
                pooled.invalidate()  # the server went away: never back into the pool
            raise
        finally:
            pooled.close()  # back into the pool (its reset-on-return as for any checkout)
