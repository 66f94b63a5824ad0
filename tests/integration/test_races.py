"""Concurrency proven by real races: processes on real PostgreSQL, real Redis."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.states import State

# The jobs raced here are left mid-pipeline on purpose: they live in a database of this
# module's own (module_database), where no worker's recovery pass can pick them up.
pytestmark = pytest.mark.integration


def _move_with_fence(database_url, job_id, fence, barrier, results):
    uow = PostgresUnitOfWork(make_engine(database_url, pool_size=1))
    barrier.wait(timeout=30)
    with uow() as jobs:
        moved = jobs.move(uuid.UUID(job_id), State.PLANNING, State.PARSING, "race", fence=fence)
    results.put(moved is not None)


def _claim_then_move(database_url, job_id, barrier, results):
    uow = PostgresUnitOfWork(make_engine(database_url, pool_size=1))
    barrier.wait(timeout=30)
    with uow() as jobs:
        fence = jobs.claim(uuid.UUID(job_id), State.PLANNING)
    barrier.wait(timeout=30)  # everyone has claimed: only the last fence is current
    with uow() as jobs:
        moved = jobs.move(uuid.UUID(job_id), State.PLANNING, State.PARSING, "race", fence=fence)
    results.put((fence, moved is not None))


def _planning_job(database_url):
    uow = PostgresUnitOfWork(make_engine(database_url, pool_size=1))
    job_id = uuid.uuid4()
    with uow() as jobs:
        jobs.insert_if_absent(job_id, {}, None)
        jobs.move(job_id, State.UPLOADED, State.PLANNING, "started")
        fence = jobs.claim(job_id, State.PLANNING)
    return uow, job_id, fence


def _race(target, args, processes):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    return outcomes


def test_compare_and_set_lets_exactly_one_of_many_processes_win(module_database):
    database_url = module_database
    # Given a job in PLANNING owned by fence f
    uow, job_id, fence = _planning_job(database_url)
    # When eight processes race the same conditional move at the same moment
    outcomes = _race(_move_with_fence, (database_url, str(job_id), fence), 8)
    # Then exactly one wins, and the history holds one PLANNING → PARSING
    assert sorted(outcomes) == [False] * 7 + [True]
    with uow() as jobs:
        detail = jobs.detail(job_id)
    assert [(t.from_state, t.to_state) for t in detail.transitions].count(
        (State.PLANNING, State.PARSING)) == 1


def test_a_stale_fence_cannot_write_after_a_newer_claim(module_database):
    database_url = module_database
    # Given several processes that each claimed the job (each bump makes a new fence)
    uow, job_id, _ = _planning_job(database_url)
    outcomes = _race(_claim_then_move, (database_url, str(job_id)), 4)
    # Then only the holder of the newest fence could move it
    fences = sorted(f for f, _ in outcomes)
    assert len(set(fences)) == 4
    assert [won for f, won in sorted(outcomes)] == [False, False, False, True]
    with uow() as jobs:
        assert jobs.get(job_id).current_state is State.PARSING
