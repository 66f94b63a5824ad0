"""The pool's check of each connection it hands out (db.engine.discard_if_closed): a
session the server ended is thrown away and replaced, a live one is kept."""

from __future__ import annotations

import psycopg2
import pytest
from sqlalchemy import text

from db.engine import make_engine
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(module_database):
    engine = make_engine(module_database, pool_size=1, max_connections=1)
    yield engine
    engine.dispose()


def session_pid(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_live_pooled_session_is_handed_out_again(engine):
    # Given the pool's one connection, idle and alive, then the same session is reused:
    # the check costs no reconnection
    first = session_pid(engine)
    assert [session_pid(engine) for _ in range(5)] == [first] * 5


def alive(database_url, pid: int) -> bool:
    with psycopg2.connect(database_url) as admin, admin.cursor() as sql:
        sql.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return sql.fetchone()[0] == 1


@pytest.mark.parametrize("how", ["terminate", "idle_timeout"])
def test_a_session_the_server_ended_is_replaced_at_checkout(engine, module_database, how):
    # Given the pool's one connection, whose session the server then ends
    first = session_pid(engine)
    if how == "terminate":  # an operator, a restart
        with psycopg2.connect(module_database) as admin, admin.cursor() as sql:
            # waits until the backend is gone, its socket closed with it
            sql.execute("SELECT pg_terminate_backend(%s, 60000)", (first,))
            assert sql.fetchone()[0], f"backend {first} still there after 60 s"
    else:  # PostgreSQL's own idle_session_timeout, here 50 ms for this session
        with engine.connect() as connection:
            connection.exec_driver_sql("SET idle_session_timeout = 50")
            connection.commit()
        wait_for(lambda: not alive(module_database, first), 30, "the session to time out")
    # When a statement next needs a connection, then it runs, on a new session
    assert session_pid(engine) != first
