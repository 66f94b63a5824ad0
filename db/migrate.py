"""Apply the Alembic migrations programmatically (``orchestrator migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from db.engine import libpq_url, sqlalchemy_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = sqlalchemy_url(database_url)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def database_name(database_url: str) -> str:
    """The database ``database_url`` names (libpq's default: the user's name)."""
    import getpass

    from psycopg2.extensions import parse_dsn

    params = parse_dsn(libpq_url(database_url))
    return params.get("dbname") or params.get("user") or getpass.getuser()


def create_database(database_url: str) -> str:
    """Create the database of ``database_url`` on its server, connected as its user to the
    server's maintenance database (``postgres``, else ``template1``, as ``createdb``
    does); return its name. One that already exists (another migrate was faster) is fine.
    A psycopg2 error says why it could not (e.g. no CREATEDB right)."""
    import psycopg2
    from psycopg2 import errors, sql

    name = database_name(database_url)
    for maintenance in ("postgres", "template1"):
        try:
            admin = psycopg2.connect(libpq_url(database_url), dbname=maintenance,
                                     connect_timeout=5)
        except psycopg2.OperationalError:
            if maintenance == "template1":
                raise
            continue
        break
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except errors.DuplicateDatabase:
        pass
    finally:
        admin.close()
    return name


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def schema_revisions() -> tuple[str, set[str]]:
    """This version's head revision, and every revision it knows (the head included)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/unused"))
    head = script.get_current_head()
    assert head is not None
    return head, {r.revision for r in script.walk_revisions()}
