"""Alembic environment: the URL comes from the caller (``db.migrate``), never a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from db.schema import metadata

url = context.config.get_main_option("sqlalchemy.url")
assert url, "db.migrate sets sqlalchemy.url"
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        # One migrator at a time, even when several processes start together.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7031925)")
        context.run_migrations()
engine.dispose()
