"""A worker process's resources are sized for the stages it runs at once (README,
"Capacity: threads or prefork"): no stage waits for a database connection or an HTTP
connection. Building them connects to nothing, so this needs no service."""

from __future__ import annotations

import pytest

from orchestrator.settings import Settings
from tasks.runtime import Runtime

ENV = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
       "REDIS_URL": "redis://127.0.0.1:1/0"}


def runtime(concurrency: int) -> Runtime:
    return Runtime(Settings.from_env({**ENV, "WORKER_CONCURRENCY": str(concurrency)}))


@pytest.mark.parametrize("concurrency", [1, 2, 100, 200])
def test_a_threads_worker_can_open_a_connection_per_stage_and_keeps_them(concurrency):
    pool = runtime(concurrency).engine.pool
    # WORKER_CONCURRENCY + 2 in all (every stage, the recovery thread and one to spare),
    # each kept once opened: none is opened per statement under a burst
    assert pool.size() == concurrency + 2
    assert pool._max_overflow == 0  # type: ignore[attr-defined]


def test_a_prefork_child_sizes_for_its_one_stage():
    child = runtime(100)
    child.after_fork()  # what each prefork pool child runs first
    pool = child.engine.pool
    assert pool.size() + pool._max_overflow == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(("concurrency", "forked", "expected"), [(100, False, 100),
                                                                 (100, True, 1)])
def test_the_http_pool_holds_a_connection_per_stage(concurrency, forked, expected):
    process = runtime(concurrency)
    if forked:
        process.after_fork()
    adapter = process.downstream.session.get_adapter("http://service/planning")
    assert adapter._pool_maxsize == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize(("pool", "expected"), [("threads", 7), ("prefork", 100)])
def test_the_workers_own_concurrency_sizes_a_threads_process(pool, expected):
    # `orchestrator worker --concurrency 7` (or `celery -A tasks worker -c 7`) overrides
    # WORKER_CONCURRENCY for Celery; the process's pools must follow it, not the setting
    from tasks.factory import create_celery_app

    app = create_celery_app(Settings.from_env({**ENV, "WORKER_CONCURRENCY": "100"}))
    app.WorkController(pool_cls=pool, concurrency=7, hostname="sizing@test")
    assert app.runtime.stages_per_process == expected
    if pool == "threads":
        engine_pool = app.runtime.engine.pool
        assert engine_pool.size() + engine_pool._max_overflow == 9  # type: ignore[attr-defined]


def test_the_api_keeps_a_connection_per_request_thread():
    from api.app import api_engine
    from cli.serve import THREADS

    pool = api_engine(Settings.from_env(ENV)).pool
    assert pool.size() >= THREADS
    assert pool._max_overflow == 0  # type: ignore[attr-defined]
