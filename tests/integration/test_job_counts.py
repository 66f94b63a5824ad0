"""``job_state_counts`` (migration 0003) is exact: after concurrent transitions from several
processes, compare-and-set races, rolled-back and refused moves, operator fails, prunes
and a truncate, in every snapshot it equals ``SELECT current_state, count(*) … GROUP BY``;
the migration's backfill and downgrade; ``/metrics`` reads it; the data-scale benchmark
reports its figures."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from api.app import create_app
from db.engine import make_engine
from db.job_counts import jobs_by_state
from db.migrate import downgrade, upgrade
from db.uow import PostgresUnitOfWork
from orchestrator.errors import JobNotFound, JobTerminal
from orchestrator.service import fail_job, start_job
from orchestrator.settings import Settings
from orchestrator.states import State, next_state
from tests.conftest import make_env

pytestmark = pytest.mark.integration

PROCESSES = 4
STEPS = 150
SHARED_JOBS = 40


class Rollback(Exception):
    """Raised inside a unit of work to roll its transaction back."""


def kept_and_counted(cur: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(what job_state_counts says, what counting the table says), zeros left out, both
    read in one snapshot."""
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        cur.execute("SELECT state, sum(count) FROM job_state_counts GROUP BY state")
        kept = {state: int(n) for state, n in cur.fetchall() if n}
        cur.execute("SELECT current_state, count(*) FROM jobs GROUP BY current_state")
        counted = dict(cur.fetchall())
    finally:
        cur.execute("COMMIT")
    return kept, counted


def assert_exact(url: str) -> dict[str, int]:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        kept, counted = kept_and_counted(connection.cursor())
    finally:
        connection.close()
    assert kept == counted
    return counted


@pytest.fixture
def sql(private_database):
    connection = psycopg2.connect(private_database)
    connection.autocommit = True
    yield connection.cursor()
    connection.close()


@pytest.fixture
def uow(private_database):
    engine = make_engine(private_database, pool_size=2)
    yield PostgresUnitOfWork(engine)
    engine.dispose()


def _enqueue_nothing(job_id: uuid.UUID, state: State, correlation_id: str | None) -> None:
    pass


def churn(url: str, seed: int, shared: list[str], steps: int) -> Counter[str]:
    """One process's share of the load, through the product's repository: start jobs as
    the API does, race the other processes to move the shared jobs (compare-and-set),
    move its own, fail some, roll some moves back, have the database refuse others, and
    prune terminal jobs. Returns what it did."""
    rng = random.Random(seed)
    engine = make_engine(url, pool_size=1, max_connections=2)
    uow = PostgresUnitOfWork(engine)
    done: Counter[str] = Counter()
    own: list[uuid.UUID] = []
    shared_ids = [uuid.UUID(j) for j in shared]
    try:
        for _ in range(steps):
            roll = rng.random()
            if roll < 0.2:
                job_id = uuid.uuid4()
                if rng.random() < 0.8:
                    start_job(uow, _enqueue_nothing, job_id, {"seed": seed}, None)
                else:  # created, never started: stays UPLOADED
                    with uow() as jobs:
                        jobs.insert_if_absent(job_id, {}, None)
                own.append(job_id)
                done["created"] += 1
                continue
            job_id = rng.choice(own + shared_ids if own else shared_ids)
            if roll < 0.7:  # one step forward or to FAILED; may lose the race
                with uow() as jobs:
                    job = jobs.get(job_id)
                    if job is None or job.current_state.is_terminal:
                        continue
                    target = (State.FAILED if rng.random() < 0.15
                              else next_state(job.current_state))
                    moved = jobs.move(job_id, job.current_state, target, "churn")
                done["moved" if moved else "lost_race"] += 1
            elif roll < 0.78:  # a move whose transaction rolls back
                try:
                    with uow() as jobs:
                        job = jobs.get(job_id)
                        if job is None or job.current_state.is_terminal:
                            continue
                        jobs.move(job_id, job.current_state, State.FAILED, "rolled back")
                        raise Rollback
                except Rollback:
                    done["rolled_back"] += 1
            elif roll < 0.84:  # a move the state guard refuses, mid-transaction
                try:
                    with uow() as jobs:
                        jobs.c.execute(text(
                            "UPDATE jobs SET current_state = 'COMPLETED',"
                            " previous_state = current_state"
                            " WHERE job_id = :id AND current_state <> 'COSTING'"),
                            {"id": str(job_id)})
                except Exception as exc:
                    assert "invalid transition" in str(exc) or "previous_state" in str(exc)
                    done["refused"] += 1
            elif roll < 0.92:  # an operator's fail, as the API does it
                try:
                    fail_job(uow, job_id, "operator says stop")
                    done["failed_by_operator"] += 1
                except (JobTerminal, JobNotFound):  # already ended, or pruned
                    pass
            else:  # prune: delete some terminal jobs in one statement
                sample = rng.sample(own + shared_ids, min(10, len(own) + len(shared_ids)))
                with uow() as jobs:
                    deleted = jobs.c.execute(text(
                        "DELETE FROM jobs WHERE job_id = ANY(CAST(:ids AS uuid[]))"
                        " AND current_state IN ('COMPLETED', 'FAILED')"),
                        {"ids": [str(j) for j in sample]}).rowcount
                done["pruned"] += deleted
    finally:
        engine.dispose()
    return done


def one_row_per_state(sql: Any) -> None:
    """Make every transaction count on the same row of each state (shard 0), as a
    one-row-per-state design would: the hardest case for exactness, which the shipped
    shards (one per backend, mostly) rarely meet."""
    sql.execute("SELECT p.oid, pg_get_functiondef(p.oid) FROM pg_proc p"
                " WHERE proname IN ('jobs_count_updated', 'jobs_count_inserted',"
                " 'jobs_count_deleted')")
    for _, definition in sql.fetchall():
        assert "pg_backend_pid() % 64" in definition
        sql.execute(definition.replace("pg_backend_pid() % 64", "0"))


@pytest.mark.parametrize("shards", ["as shipped", "one row per state"])
def test_counts_stay_exact_under_concurrent_transitions_from_several_processes(
        private_database, sql, shards):
    if shards == "one row per state":
        one_row_per_state(sql)
    # Given jobs in PLANNING that every process will race for
    shared = [str(uuid.uuid4()) for _ in range(SHARED_JOBS)]
    sql.execute("INSERT INTO jobs (job_id, current_state) SELECT unnest(%s::uuid[]),"
                " 'UPLOADED'", (shared,))
    sql.execute("UPDATE jobs SET current_state = 'PLANNING', previous_state = 'UPLOADED'")
    # When several processes churn at once, each through connections of its own
    with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(churn, private_database, seed, shared, STEPS)
                   for seed in range(PROCESSES)]
        # Then every snapshot read meanwhile agrees with the table
        mismatches, snapshots = [], 0
        while not all(f.done() for f in futures):
            kept, counted = kept_and_counted(sql)
            snapshots += 1
            if kept != counted:
                mismatches.append((kept, counted))
            time.sleep(0.01)
        done = sum((f.result() for f in futures), Counter())
    assert mismatches == []
    assert snapshots > 0
    # and so does the end, after every kind of write happened
    assert {"created", "moved", "rolled_back", "refused", "failed_by_operator",
            "pruned"} <= set(done), done
    counted = assert_exact(private_database)
    assert sum(counted.values()) == SHARED_JOBS + done["created"] - done["pruned"]
    sql.execute("SELECT count(DISTINCT shard) FROM job_state_counts")
    assert (sql.fetchone()[0] == 1) == (shards == "one row per state")


def test_failure_paths_leave_the_counts_exact(private_database, uow, sql):
    # A job started twice: the second insert finds it (ON CONFLICT DO NOTHING), no count
    job_id = uuid.uuid4()
    start_job(uow, _enqueue_nothing, job_id, {}, None)
    start_job(uow, _enqueue_nothing, job_id, {}, None)
    assert assert_exact(private_database) == {"PLANNING": 1}
    # A fenced-out move (stale fence): zero rows, no count
    with uow() as jobs:
        fence = jobs.claim(job_id, State.PLANNING)
        assert fence is not None
        assert jobs.move(job_id, State.PLANNING, State.PARSING, "late", fence=fence - 1) is None
    assert assert_exact(private_database) == {"PLANNING": 1}
    # A move the guard refuses: the statement fails, nothing counted
    with pytest.raises(psycopg2.errors.CheckViolation):
        sql.execute("UPDATE jobs SET current_state = 'COMPLETED', previous_state = 'PLANNING'"
                    " WHERE job_id = %s", (str(job_id),))
    # A move rolled back after it was counted in its transaction
    with pytest.raises(Rollback), uow() as jobs:
        jobs.move(job_id, State.PLANNING, State.PARSING, "rolled back")
        assert jobs_by_state(jobs.c)["PARSING"] == 1  # seen inside the transaction
        raise Rollback
    assert assert_exact(private_database) == {"PLANNING": 1}
    # An update that is not a move (a heartbeat) and a state written back unchanged
    with uow() as jobs:
        assert jobs.heartbeat(job_id, State.PLANNING, fence)
    sql.execute("UPDATE jobs SET current_state = current_state WHERE job_id = %s",
                (str(job_id),))
    assert assert_exact(private_database) == {"PLANNING": 1}
    # A stage that gives up, an operator's fail, and a refused fail of a terminal job
    with uow() as jobs:
        assert jobs.move(job_id, State.PLANNING, State.FAILED, "stage failed", fence=fence)
    other = uuid.uuid4()
    start_job(uow, _enqueue_nothing, other, {}, None)
    fail_job(uow, other, "operator says stop")
    with pytest.raises(JobTerminal):
        fail_job(uow, other, "again")
    assert assert_exact(private_database) == {"FAILED": 2}


def test_deletes_and_truncate_leave_the_counts_exact(private_database, sql):
    # Given jobs in every state, written by statements that move many at once
    sql.execute("INSERT INTO jobs (job_id, current_state) SELECT gen_random_uuid(),"
                " 'UPLOADED' FROM generate_series(1, 700)")
    for before, after, how_many in [("UPLOADED", "PLANNING", 600), ("PLANNING", "PARSING", 500),
                                    ("PARSING", "ENRICHING", 400),
                                    ("ENRICHING", "COSTING", 300),
                                    ("COSTING", "COMPLETED", 200)]:
        sql.execute("UPDATE jobs SET current_state = %s, previous_state = current_state"
                    " WHERE job_id IN (SELECT job_id FROM jobs WHERE current_state = %s"
                    " LIMIT %s)", (after, before, how_many))
        assert_exact(private_database)
    sql.execute("UPDATE jobs SET current_state = 'FAILED', previous_state = current_state"
                " WHERE current_state IN ('PARSING', 'COSTING')")
    counted = assert_exact(private_database)
    assert set(counted) == {"UPLOADED", "PLANNING", "ENRICHING", "COMPLETED", "FAILED"}
    # When terminal jobs are pruned in one statement, and one active job is deleted
    sql.execute("DELETE FROM jobs WHERE current_state IN ('COMPLETED', 'FAILED')")
    sql.execute("DELETE FROM jobs WHERE job_id = (SELECT job_id FROM jobs"
                " WHERE current_state = 'PLANNING' LIMIT 1)")
    # Then the counts follow
    after = assert_exact(private_database)
    assert after == {"UPLOADED": counted["UPLOADED"], "PLANNING": counted["PLANNING"] - 1,
                     "ENRICHING": counted["ENRICHING"]}
    # And a deleting statement that deletes nothing changes nothing
    sql.execute("DELETE FROM jobs WHERE false")
    assert assert_exact(private_database) == after
    # And after TRUNCATE every count is zero, and counting starts again from there
    sql.execute("TRUNCATE jobs CASCADE")
    sql.execute("SELECT coalesce(sum(count), 0) FROM job_state_counts")
    assert sql.fetchone()[0] == 0
    sql.execute("INSERT INTO jobs (job_id, current_state) VALUES (gen_random_uuid(),"
                " 'UPLOADED')")
    assert assert_exact(private_database) == {"UPLOADED": 1}


def test_the_migration_backfills_the_counts_and_its_downgrade_removes_them(
        private_database, sql):
    # Given a database at 0002 holding jobs in several states
    downgrade(private_database, "0002")
    sql.execute("SELECT to_regclass('job_state_counts')")
    assert sql.fetchone()[0] is None
    sql.execute("INSERT INTO jobs (job_id, current_state) SELECT gen_random_uuid(),"
                " 'UPLOADED' FROM generate_series(1, 50)")
    sql.execute("UPDATE jobs SET current_state = 'PLANNING', previous_state = 'UPLOADED'"
                " WHERE job_id IN (SELECT job_id FROM jobs LIMIT 30)")
    sql.execute("UPDATE jobs SET current_state = 'FAILED', previous_state = 'PLANNING'"
                " WHERE job_id IN (SELECT job_id FROM jobs WHERE current_state = 'PLANNING'"
                " LIMIT 12)")
    # When it is upgraded, the counts start from the rows already there
    upgrade(private_database)
    assert assert_exact(private_database) == {"UPLOADED": 20, "PLANNING": 18, "FAILED": 12}
    # And writes after it are counted from there
    sql.execute("DELETE FROM jobs WHERE current_state = 'FAILED'")
    assert assert_exact(private_database) == {"UPLOADED": 20, "PLANNING": 18}
    # When it is downgraded, the table, its triggers and their functions are gone, and
    # jobs can still be written
    downgrade(private_database, "0002")
    sql.execute("SELECT to_regclass('job_state_counts')")
    assert sql.fetchone()[0] is None
    sql.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass"
                " AND tgname LIKE 'jobs_count%%'")
    assert sql.fetchone()[0] == 0
    sql.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'jobs_count%%'")
    assert sql.fetchone()[0] == 0
    sql.execute("UPDATE jobs SET current_state = 'PARSING', previous_state = 'PLANNING'"
                " WHERE current_state = 'PLANNING'")
    # And upgraded again, it counts what the table holds now
    upgrade(private_database)
    assert assert_exact(private_database) == {"UPLOADED": 20, "PARSING": 18}


def scrape(client: Any) -> dict[str, float]:
    body = client.get("/metrics").get_data(as_text=True)
    return {sample.labels["state"]: sample.value
            for family in text_string_to_metric_families(body)
            if family.name == "orchestrator_jobs" for sample in family.samples}


def test_metrics_reports_the_kept_counts(private_database, redis_url, downstream, uow, sql):
    # Given the API over a database of the test's own, with jobs in a few states
    settings = Settings.from_env(make_env(private_database, redis_url, downstream))
    client = create_app(settings, enqueuer=_enqueue_nothing).test_client()
    for _ in range(3):
        start_job(uow, _enqueue_nothing, uuid.uuid4(), {}, None)
    failed = uuid.uuid4()
    start_job(uow, _enqueue_nothing, failed, {}, None)
    fail_job(uow, failed, "operator says stop")
    with uow() as jobs:
        jobs.insert_if_absent(uuid.uuid4(), {}, None)
    # Then a scrape reports every state, the empty ones as 0
    expected = {state.value: 0.0 for state in State}
    expected.update({"UPLOADED": 1.0, "PLANNING": 3.0, "FAILED": 1.0})
    assert scrape(client) == expected
    # And it is job_state_counts the scrape reads, not a count of the jobs table
    sql.execute("INSERT INTO job_state_counts (state, shard, count) VALUES ('COSTING', 999,"
                " 1000)")
    assert scrape(client) == {**expected, "COSTING": 1000.0}


def test_counts_stay_exact_while_threads_of_one_process_race(private_database, uow):
    # Many connections of one pool (a threads worker's shape) moving the same jobs
    job_ids = [uuid.uuid4() for _ in range(20)]
    for job_id in job_ids:
        start_job(uow, _enqueue_nothing, job_id, {}, None)
    errors: list[BaseException] = []

    def advance() -> None:
        try:
            for _ in range(30):
                job_id = random.choice(job_ids)
                with uow() as jobs:
                    job = jobs.get(job_id)
                    if job is not None and not job.current_state.is_terminal:
                        jobs.move(job_id, job.current_state, next_state(job.current_state),
                                  "race")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=advance) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(assert_exact(private_database).values()) == len(job_ids)


def test_the_data_scale_benchmark_reports_its_figures(capsys):
    from benchmarks import data_scale

    figures = data_scale.run(quick=True, large=1_500, small=600, burst_clients=3)
    small, large = data_scale.label(600), data_scale.label(1_500)
    for suffix in (small, large):
        for key in ("metrics_p50_ms", "metrics_p99_ms", "state_p50_ms", "state_p99_ms",
                    "list_p50_ms", "list_p99_ms", "recovery_pass_ms", "full_count_p99_ms"):
            assert isinstance(figures[f"{key}_{suffix}"], float), key
    assert figures["rows"] == 1_500 and figures["rows_small"] == 600
    assert {"burst_tx_per_s_counted", "burst_tx_per_s_uncounted",
            f"migration_0003_s_{large}"} <= set(figures)
    assert "[data]" in capsys.readouterr().out
