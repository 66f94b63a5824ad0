"""Data scale: what the API's reads and a recovery pass cost with a million jobs of history.

``python -m benchmarks.data_scale`` (``QUICK=1``: 100,000 jobs instead of 1,000,000). On a
fresh database of its own (``tests.support.services``, dropped at the end however the run
ends) and an empty Redis index, migrated to head, it loads jobs in SQL (``generate_series``,
no application code): a few hundred non-terminal jobs (``ACTIVE``, the newest, each with
a recent sign of life), the rest a year of history, 88 % COMPLETED and 12 % FAILED at
one of the four stages, and for one job in ``HISTORY_EVERY`` the transitions and stage
attempts the pipeline writes. The counts of ``job_state_counts`` are kept by its own
triggers while loading (the state guard alone is set aside for the load's transaction).
Then, at a small size (10,000 jobs) and again after growing the same database to the
large one (older history added, the active jobs unchanged), it measures through the real
Flask app (``api.app.create_app``, Flask's test client, no HTTP server):

* ``GET /metrics`` (the ``orchestrator_jobs`` gauge is read from ``job_state_counts``);
* ``GET /internal/jobs/{id}/state`` of jobs picked at random over the whole table;
* ``GET /internal/jobs`` pages: the newest, by state, and from a cursor anywhere;
* an idle recovery pass (``orchestrator.service.recover`` on a real PostgresUnitOfWork and
  Redis locks, as ``tasks.recovery`` calls it): nothing is stale, nothing is enqueued;
* the full-table ``GROUP BY`` count ``/metrics`` ran before migration 0003, for comparison.

At the large size it also times migration 0003 itself (down to 0002 and up again: the
backfill count under its write lock) and a burst of concurrent transitions (``BURST_CLIENTS``
connections each moving jobs PLANNING → PARSING in the stage's own transaction shape)
with the counting trigger on and off, and it checks that the counts equal a
``count(*) … GROUP BY`` of the table. Human lines ("[data] …") as it goes, then one JSON
object. ``run(quick)`` returns the same figures. Nothing asserts on speed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import psycopg2
import redis

from benchmarks.stack import BenchmarkError
from benchmarks.stats import percentile, r

SMALL = 10_000
LARGE = 1_000_000
QUICK_LARGE = 100_000
#: Non-terminal jobs, the newest ones, whatever the size of the history.
ACTIVE = 300
#: One job in this many gets its transitions and stage attempts written too.
HISTORY_EVERY = 4
#: Concurrent connections of the transition burst, and transitions each.
BURST_CLIENTS = 32
BURST_EACH = 60
TOKEN = "data-scale-" + uuid.uuid4().hex[:8]
STALE_AFTER = 300.0
STAGE_ARRAY = "ARRAY['PLANNING', 'PARSING', 'ENRICHING', 'COSTING']"
GAVE_UP = "attempt 3/3: HTTP 503 from the service: unavailable (retries exhausted after 3 attempts)"

# The generated jobs, numbered from the newest (i = 1): job i is created 30 s before job
# i - 1; the first ACTIVE are in a stage (reached = the stage's position), the rest are
# COMPLETED (reached 4) or, one in eight, FAILED at stage ``reached`` (1 to 4).
GENERATED = f"""
SELECT i, md5('data-scale-' || i)::uuid AS job_id,
       now() - make_interval(secs => i * 30) AS created_at,
       CASE WHEN i <= {ACTIVE} THEN ({STAGE_ARRAY})[1 + mod(i, 4)]
            WHEN mod(i, 100) < 88 THEN 'COMPLETED' ELSE 'FAILED' END AS state,
       CASE WHEN i <= {ACTIVE} THEN 1 + mod(i, 4)
            WHEN mod(i, 100) < 88 THEN 4 ELSE 1 + (mod(i, 100) - 88) / 3 END AS reached
FROM generate_series(%(low)s::int, %(high)s::int) AS i
"""

JOBS = f"""
INSERT INTO jobs (job_id, current_state, previous_state, created_at, updated_at, started_at,
                  completed_at, retry_count, error_message, plan_reference, result_reference,
                  input, correlation_id, fence, last_progress_at, resume_count, state_reason)
SELECT job_id, state,
       CASE WHEN state = 'COMPLETED' THEN 'COSTING'
            WHEN state = 'FAILED' THEN ({STAGE_ARRAY})[reached]
            ELSE (ARRAY['UPLOADED','PLANNING','PARSING','ENRICHING'])[reached] END,
       created_at,
       CASE WHEN i <= {ACTIVE} THEN now() - make_interval(secs => mod(i, 60))
            ELSE created_at + make_interval(secs => 10 * reached) END,
       created_at + interval '1 second',
       CASE WHEN i <= {ACTIVE} THEN NULL ELSE created_at + make_interval(secs => 10 * reached) END,
       mod(i, 7) / 5,
       CASE WHEN state = 'FAILED' THEN ({STAGE_ARRAY})[reached]
            || ' {GAVE_UP}'
       END,
       CASE WHEN reached >= 2 OR state = 'COMPLETED' THEN 'plans/' || job_id || '.json' END,
       CASE WHEN state = 'COMPLETED' THEN 'results/' || job_id || '.json' END,
       jsonb_build_object('sample', (ARRAY['web-stack', 'teardown'])[1 + mod(i, 2)],
                          'workspace', 'team-' || mod(i, 50)),
       md5(i::text), reached,
       CASE WHEN i <= {ACTIVE} THEN now() - make_interval(secs => mod(i, 60))
            ELSE created_at + make_interval(secs => 10 * reached) END,
       0,
       CASE WHEN state = 'FAILED' THEN 'stage failed'
            WHEN state = 'COMPLETED' THEN 'COSTING succeeded'
            WHEN reached = 1 THEN 'started'
            ELSE ({STAGE_ARRAY})[reached - 1] || ' succeeded'
       END
FROM ({GENERATED}) AS g
"""

# Forward moves UPLOADED → … up to the stage reached, then (terminal jobs) the last move.
TRANSITIONS = f"""
INSERT INTO job_transitions (job_id, from_state, to_state, at, reason)
SELECT g.job_id, s.from_state, s.to_state, g.created_at + make_interval(secs => 10 * s.n),
       s.reason
FROM ({GENERATED}) AS g
CROSS JOIN LATERAL (
    SELECT n, (ARRAY['UPLOADED','PLANNING','PARSING','ENRICHING'])[n] AS from_state,
           ({STAGE_ARRAY})[n] AS to_state,
           CASE WHEN n = 1 THEN 'started'
                ELSE (ARRAY['PLANNING','PARSING','ENRICHING'])[n - 1] || ' succeeded' END
               AS reason
    FROM generate_series(1, g.reached) AS n
    UNION ALL
    SELECT g.reached + 1, ({STAGE_ARRAY})[g.reached],
           g.state, CASE WHEN g.state = 'FAILED' THEN 'stage failed' ELSE 'COSTING succeeded' END
    WHERE g.state IN ('COMPLETED', 'FAILED')
) AS s
WHERE mod(g.i, {HISTORY_EVERY}) = 0 OR g.i <= {ACTIVE}
"""

# One attempt per stage reached: SUCCESS before the last; the last SUCCESS (COMPLETED),
# FAILED (FAILED) or RUNNING (in flight).
ATTEMPTS = f"""
INSERT INTO stage_executions (job_id, stage_name, attempt_number, status, started_at,
                              completed_at, duration_ms, input_data, output_data,
                              error_message, celery_task_id, fence)
SELECT g.job_id, ({STAGE_ARRAY})[n], 1, st.status,
       g.created_at + make_interval(secs => 10 * n - 9),
       CASE WHEN st.status <> 'RUNNING' THEN g.created_at + make_interval(secs => 10 * n) END,
       CASE WHEN st.status <> 'RUNNING' THEN 9000 + mod(g.i, 997) END,
       jsonb_build_object('plan_reference', 'plans/' || g.job_id || '.json'),
       CASE WHEN st.status = 'SUCCESS' THEN jsonb_build_object(
           'plan_reference', 'plans/' || g.job_id || '.json',
           'result_reference', 'results/' || g.job_id || '.json',
           'resources', 12 + mod(g.i, 40), 'monthly_cost_usd', round(mod(g.i, 10000) / 7.0, 2),
           'currency', 'USD', 'region', 'us-east-1', 'catalog_date', '2026-11-01') END,
       CASE WHEN st.status = 'FAILED' THEN 'HTTP 503 from the service: unavailable' END,
       md5('task-' || g.i || '-' || n), n
FROM ({GENERATED}) AS g
CROSS JOIN LATERAL generate_series(1, g.reached) AS n
CROSS JOIN LATERAL (SELECT CASE WHEN n < g.reached OR g.state = 'COMPLETED' THEN 'SUCCESS'
                                WHEN g.state = 'FAILED' THEN 'FAILED'
                                ELSE 'RUNNING' END AS status) AS st
WHERE mod(g.i, {HISTORY_EVERY}) = 0 OR g.i <= {ACTIVE}
"""

FULL_COUNT = "SELECT current_state, count(*) FROM jobs GROUP BY current_state"


def say(line: str) -> None:
    print(f"[data] {line}", flush=True)


def label(rows: int) -> str:
    """``10k``, ``1m``: the suffix of a size's figures."""
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}m"
    return f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


@contextlib.contextmanager
def connect(url: str) -> Iterator[Any]:
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        yield connection
    finally:
        connection.close()


def load(url: str, low: int, high: int) -> float:
    """Add generated jobs ``low``…``high`` (numbered from the newest) with their history;
    the seconds it took. The state guard is off for this transaction only: jobs are
    written straight into their final state. The counting triggers stay on."""
    started = time.monotonic()
    with connect(url) as connection, connection.cursor() as cur:
        bounds = {"low": low, "high": high}
        cur.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_state_guard")
        cur.execute(JOBS, bounds)
        cur.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_state_guard")
        # The history's foreign keys point at rows this transaction just wrote: skip
        # checking them one by one when the role may (a superuser), as a restore does.
        cur.execute("SAVEPOINT fk")
        try:
            cur.execute("SET LOCAL session_replication_role = replica")
        except psycopg2.Error:
            cur.execute("ROLLBACK TO SAVEPOINT fk")
        cur.execute(TRANSITIONS, bounds)
        cur.execute(ATTEMPTS, bounds)
        connection.commit()
    # What autovacuum would have done by the time a deployment has this much history
    # (and this machine's server runs with autovacuum off): visibility, statistics.
    with connect(url) as connection:
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) jobs, job_transitions, stage_executions,"
                        " job_state_counts")
    return time.monotonic() - started


def exact(url: str) -> dict[str, int]:
    """The counts the scrape reads; BenchmarkError unless they equal the table's."""
    from sqlalchemy import create_engine

    from db.engine import sqlalchemy_url
    from db.job_counts import jobs_by_state

    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            kept = {s: n for s, n in jobs_by_state(connection).items() if n}
    finally:
        engine.dispose()
    with connect(url) as connection, connection.cursor() as cur:
        cur.execute(FULL_COUNT)
        counted = dict(cur.fetchall())
    if kept != counted:
        raise BenchmarkError(f"job_state_counts {kept} != count(*) {counted}")
    return counted


def timed(call: Callable[[], Any], times: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def line(what: str, values: list[float]) -> str:
    return (f"{what}: p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms,"
            f" max {max(values):.2f} ms (n={len(values)})")


class Reads:
    """The API's reads and a recovery pass over one database, through the real code."""

    def __init__(self, url: str, redis_url: str):
        from api.app import create_app
        from db.engine import make_engine
        from db.uow import PostgresUnitOfWork
        from orchestrator.settings import Settings
        from tasks.lock import RedisLocks

        settings = Settings.from_env({
            "DATABASE_URL": url, "REDIS_URL": redis_url, "ORCHESTRATOR_API_TOKENS": TOKEN,
            "CELERY_QUEUE": f"data-scale-{uuid.uuid4().hex[:8]}", "LOG_LEVEL": "WARNING"})
        self.engine = make_engine(url)
        self.redis = redis.Redis.from_url(redis_url)
        self.enqueued: list[uuid.UUID] = []
        self.client = create_app(settings, enqueuer=self._enqueue,
                                 engine=self.engine).test_client()
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.uow = PostgresUnitOfWork(self.engine)
        self.locks = RedisLocks(self.redis, prefix=f"data-scale-{uuid.uuid4().hex[:8]}:",
                                ttl=STALE_AFTER)

    def _enqueue(self, job_id: uuid.UUID, from_state: Any, correlation_id: str | None
                 ) -> None:
        self.enqueued.append(job_id)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()

    def get(self, path: str) -> Any:
        response = self.client.get(path, headers=self.headers)
        if response.status_code != 200:
            raise BenchmarkError(f"GET {path}: HTTP {response.status_code} "
                                 f"{response.get_data(as_text=True)[:300]}")
        return response

    def metrics(self) -> None:
        text = self.get("/metrics").get_data(as_text=True)
        if "orchestrator_jobs{" not in text:
            raise BenchmarkError("/metrics has no orchestrator_jobs gauge")

    def state(self, job_id: uuid.UUID) -> None:
        self.get(f"/internal/jobs/{job_id}/state")

    def recovery_pass(self) -> None:
        from orchestrator.service import recover

        resumed = recover(self.uow, self.locks, self._enqueue, stale_after=STALE_AFTER)
        if resumed or self.enqueued:
            raise BenchmarkError(f"an idle recovery pass resumed {len(resumed)} job(s)")


def list_paths(url: str, rows: int, picks: int) -> list[str]:
    """List requests: the newest page, each state's, and pages from random cursors."""
    from api.requests import encode_cursor

    paths = ["/internal/jobs", "/internal/jobs?state=COMPLETED", "/internal/jobs?state=FAILED",
             "/internal/jobs?state=PLANNING"]
    with connect(url) as connection, connection.cursor() as cur:
        for n in random.sample(range(1, rows + 1), picks):
            cur.execute("SELECT created_at, job_id, current_state FROM jobs WHERE job_id ="
                        " md5('data-scale-' || %s)::uuid", (n,))
            created, job, state = cur.fetchone()
            cursor = encode_cursor(created, uuid.UUID(str(job)))
            paths += [f"/internal/jobs?cursor={cursor}",
                      f"/internal/jobs?state={state}&cursor={cursor}"]
    return paths


def measure(url: str, redis_url: str, rows: int, quick: bool) -> dict[str, float]:
    """The figures at the database's current size, keyed ``…_{label(rows)}``."""
    suffix = label(rows)
    scrapes, lookups, pages, passes, counts = ((100, 300, 150, 10, 5) if quick
                                               else (300, 1000, 400, 30, 10))
    reads = Reads(url, redis_url)
    # The interpreter's full collections (≈ 50 ms with this many modules loaded, a few
    # times in the first requests) are not what grows with the data: keep them out.
    gc.collect()
    gc.freeze()
    try:
        metrics = timed(reads.metrics, scrapes)
        say(line(f"{rows:,} jobs: GET /metrics", metrics))
        with connect(url) as connection, connection.cursor() as cur:
            cur.execute("SELECT md5('data-scale-' || n)::uuid::text"
                        " FROM unnest(%s::bigint[]) AS n",
                        (random.choices(range(1, rows + 1), k=lookups),))
            ids = [uuid.UUID(row[0]) for row in cur.fetchall()]
        iterator = iter(ids * 2)
        state = timed(lambda: reads.state(next(iterator)), lookups)
        say(line(f"{rows:,} jobs: GET /internal/jobs/{{id}}/state", state))
        paths = list_paths(url, rows, max(pages // 8, 1))
        cycle = iter(paths * (pages // len(paths) + 2))
        listing = timed(lambda: reads.get(next(cycle)), pages)
        say(line(f"{rows:,} jobs: GET /internal/jobs (newest, by state, from a cursor)",
                 listing))
        recovery = timed(reads.recovery_pass, passes, warmup=2)
        say(line(f"{rows:,} jobs: idle recovery pass", recovery))
    finally:
        gc.unfreeze()
        reads.close()
    with connect(url) as connection, connection.cursor() as cur:
        def full_count() -> None:
            cur.execute(FULL_COUNT)
            cur.fetchall()

        full = timed(full_count, counts, warmup=1)
    say(line(f"{rows:,} jobs: the full-table count /metrics ran before 0003", full))
    return {
        f"metrics_p50_ms_{suffix}": r(percentile(metrics, 50), 2),
        f"metrics_p99_ms_{suffix}": r(percentile(metrics, 99), 2),
        f"state_p50_ms_{suffix}": r(percentile(state, 50), 2),
        f"state_p99_ms_{suffix}": r(percentile(state, 99), 2),
        f"list_p50_ms_{suffix}": r(percentile(listing, 50), 2),
        f"list_p99_ms_{suffix}": r(percentile(listing, 99), 2),
        f"recovery_pass_ms_{suffix}": r(percentile(recovery, 50), 2),
        f"recovery_pass_max_ms_{suffix}": r(max(recovery), 2),
        f"full_count_p50_ms_{suffix}": r(percentile(full, 50), 1),
        f"full_count_p99_ms_{suffix}": r(percentile(full, 99), 1),
    }


def time_migration(url: str) -> float:
    """Seconds for migration 0003 on this table (down to 0002 first): the backfill."""
    from db.migrate import downgrade, upgrade

    downgrade(url, "0002")
    started = time.monotonic()
    upgrade(url)
    return time.monotonic() - started


BURST_MOVE = """
UPDATE jobs SET current_state = 'PARSING', previous_state = 'PLANNING',
       state_reason = 'PLANNING succeeded', updated_at = now(), last_progress_at = now(),
       next_attempt_at = NULL, plan_reference = 'plans/burst.json'
WHERE job_id = %s AND current_state = 'PLANNING' AND fence = 1 RETURNING *
"""
BURST_FINISH = """
UPDATE stage_executions SET status = 'SUCCESS', completed_at = clock_timestamp(),
       output_data = '{"plan_reference": "plans/burst.json"}'
WHERE job_id = %s AND stage_name = 'PLANNING' AND attempt_number = 1 AND status = 'RUNNING'
"""


def burst(url: str, counted: bool, clients: int) -> float:
    """Transitions per second of BURST_CLIENTS connections moving fresh PLANNING jobs to
    PARSING at once, each in the stage's transaction (move, finish the attempt, commit).
    Uncounted: the counting trigger is disabled meanwhile, and the counts are corrected
    for those moves afterwards."""
    n = clients * BURST_EACH
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with connect(url) as admin, admin.cursor() as cur:
        cur.execute("INSERT INTO jobs (job_id, current_state) SELECT unnest(%s::uuid[]),"
                    " 'UPLOADED'", (ids,))
        cur.execute("UPDATE jobs SET current_state = 'PLANNING', previous_state = 'UPLOADED',"
                    " fence = 1 WHERE job_id = ANY(%s::uuid[])", (ids,))
        cur.execute("INSERT INTO stage_executions (job_id, stage_name, attempt_number,"
                    " status, fence) SELECT unnest(%s::uuid[]), 'PLANNING', 1, 'RUNNING', 1",
                    (ids,))
        if not counted:
            cur.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_count_updated")
        admin.commit()
        try:
            connections = [psycopg2.connect(url, connect_timeout=5)
                           for _ in range(clients)]
            try:
                wall = _run_burst(connections, ids)
            finally:
                for connection in connections:
                    connection.close()
        finally:
            if not counted:
                cur.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_count_updated")
                cur.execute("INSERT INTO job_state_counts AS c (state, shard, count)"
                            " VALUES ('PLANNING', 0, %s), ('PARSING', 0, %s)"
                            " ON CONFLICT (state, shard) DO UPDATE"
                            " SET count = c.count + excluded.count", (-n, n))
                admin.commit()
    return n / wall


def _run_burst(connections: list[Any], ids: list[str]) -> float:
    errors: list[BaseException] = []
    start = threading.Barrier(len(connections) + 1)

    def client(connection: Any, mine: list[str]) -> None:
        try:
            start.wait()
            for job_id in mine:
                with connection.cursor() as cur:
                    cur.execute(BURST_MOVE, (job_id,))
                    if cur.fetchone() is None:
                        raise BenchmarkError(f"burst: job {job_id} did not move")
                    cur.execute(BURST_FINISH, (job_id,))
                connection.commit()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c, ids[i::len(connections)]))
               for i, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise BenchmarkError(f"burst: {errors[0]!r}")
    return wall


def run(quick: bool, large: int | None = None, small: int = SMALL,
        burst_clients: int = BURST_CLIENTS) -> dict[str, Any]:
    """Every figure, at ``small`` jobs and at ``large`` (default: 1,000,000, or 100,000
    when ``quick``). The database and the Redis index are removed however it ends."""
    from db.migrate import upgrade
    from tests.support.services import test_postgres, test_redis

    large = large or (QUICK_LARGE if quick else LARGE)
    if not ACTIVE < small < large:
        raise ValueError(f"need {ACTIVE} < small < large, got {small} and {large}")
    figures: dict[str, Any] = {"rows": large, "rows_small": small, "active_jobs": ACTIVE,
                               "history_every": HISTORY_EVERY, "quick": quick}
    with (test_postgres(os.environ.get("TEST_DATABASE_URL")) as url,
          test_redis(os.environ.get("TEST_REDIS_URL")) as redis_url):
        upgrade(url)
        seconds = load(url, 1, small)
        say(f"loaded {small:,} jobs ({ACTIVE} in flight) in {seconds:.1f} s")
        exact(url)
        figures.update(measure(url, redis_url, small, quick))
        seconds = load(url, small + 1, large)
        counts = exact(url)
        say(f"grew to {large:,} jobs in {seconds:.1f} s: {counts}; job_state_counts agrees")
        figures["load_s"] = r(seconds)
        figures.update(measure(url, redis_url, large, quick))
        suffix = label(large)
        figures[f"migration_0003_s_{suffix}"] = r(time_migration(url), 2)
        exact(url)
        say(f"migration 0003 on {large:,} jobs (down to 0002, up again): "
            f"{figures[f'migration_0003_s_{suffix}']} s; the backfill agrees")
        rates: dict[bool, list[float]] = {True: [], False: []}
        for counted in (False, True) * 3:
            rates[counted].append(burst(url, counted, burst_clients))
        exact(url)
        figures["burst_clients"] = burst_clients
        figures["burst_tx_per_s_counted"] = r(max(rates[True]))
        figures["burst_tx_per_s_uncounted"] = r(max(rates[False]))
        say(f"burst of {burst_clients} connections moving PLANNING → PARSING: "
            f"{figures['burst_tx_per_s_counted']:.0f} transitions/s counted, "
            f"{figures['burst_tx_per_s_uncounted']:.0f} with the counting trigger off "
            "(best of three each); the counts still agree")
    return figures


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, through the clean-up that drops the database.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    quick = os.environ.get("QUICK", "") not in ("", "0")
    began = time.monotonic()
    try:
        figures = run(quick)
    except BenchmarkError as exc:
        print(f"benchmark broken: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the database was dropped", file=sys.stderr, flush=True)
        return 130
    figures["total_s"] = r(time.monotonic() - began)
    say(f"done in {figures['total_s']} s")
    print(json.dumps(figures), flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
