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

    @contextmanager
    def __call__(self) -> Iterator[JobRepository]:
        with self.engine.begin() as connection:
            yield JobRepository(connection)
