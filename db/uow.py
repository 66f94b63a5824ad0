"""The unit of work: one transaction around a block of repository calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
            with self._autocommit.connect() as connection:
                yield JobRepository(connection)
            return
        with self.engine.begin() as connection:
            yield JobRepository(connection)
