"""Recovery inside every worker: a pass at start-up, then every ``RECOVERY_INTERVAL``;
first, a line saying whether PostgreSQL has room for the worker's connection pool.

A worker bootstep runs the passes in a thread of the worker's main process, so there is
no extra process to deploy (no beat) and as many recoverers as workers; the passes are
safe to run concurrently (``FOR UPDATE SKIP LOCKED`` in :func:`orchestrator.service.recover`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, bootsteps

from db.engine import connection_room
from orchestrator.logs import log_event
from orchestrator.service import recover
from orchestrator.settings import WORKER_SHARES_ENV
from tasks.chain import CeleryEnqueuer

log = logging.getLogger(__name__)


def recovery_pass(app: Celery) -> int:
    """One pass; returns how many jobs it resumed."""
    runtime = app.runtime
    resumed = recover(runtime.uow, runtime.locks, CeleryEnqueuer(app),
                      stale_after=runtime.settings.recovery_stale_after)
    log_event(log, "recovery.pass", logging.INFO if resumed else logging.DEBUG,
              resumed=len(resumed))
    runtime.metrics.recovered(len(resumed))
    return len(resumed)


#: The relay's own engine in every worker's main process (:mod:`tasks.relay`).
RELAY_CONNECTIONS = 2


def connection_ceiling(pool: str, concurrency: int) -> int:
    """The most PostgreSQL connections one worker may open: under threads, its one pool of
    ``concurrency + 2`` (:attr:`tasks.runtime.Runtime.engine`); under prefork, 3 per child
    (1 stage + 2) and 2 for the main process's recovery and hard-limit handling; plus, in
    both, the outbox relay's own."""
    if pool == "prefork":
        return 3 * concurrency + 2 + RELAY_CONNECTIONS
    return concurrency + 2 + RELAY_CONNECTIONS


def worker_shares(concurrency: int) -> list[int]:
    """The stages in flight of each process of this worker: this process's alone, or, in
    one of a few processes (cli.workers), every process's share, as its supervisor set
    them in ``ORCHESTRATOR_WORKER_SHARES``."""
    shares = os.environ.get(WORKER_SHARES_ENV, "")
    try:
        values = [int(share) for share in shares.split(",") if share.strip()]
    except ValueError:
        values = []
    return values or [concurrency]


def check_connection_budget(app: Celery, pool: str, concurrency: int) -> None:
    """Say at start-up whether PostgreSQL has room for this worker's connection pools
    (every process of it, when it runs a few); a worker that may open more than is left
    risks stages failing to connect under a burst, so that is a warning naming the
    figures to change."""
    ceiling = connection_ceiling(pool, concurrency)
    shares = worker_shares(concurrency) if pool == "threads" else [concurrency]
    total = sum(connection_ceiling(pool, share) for share in shares)
    usable, in_use = connection_room(app.runtime.engine)
    room = usable - in_use + 1  # this check's own connection is the worker's
    fits = total <= room
    details: dict[str, Any] = {}
    if len(shares) > 1:
        details.update(worker_processes=len(shares), worker_may_open=total)
    if not fits:
        whose = (f"this worker's {len(shares)} processes may open {total}" if len(shares) > 1
                 else f"this worker may open {total}")
        details["error"] = (
            f"{whose} PostgreSQL connections ({pool} pool, "
            f"WORKER_CONCURRENCY={sum(shares)}) but only {room} of {usable} are free: "
            "lower WORKER_CONCURRENCY or raise PostgreSQL's max_connections (or put "
            "PgBouncer in front)")
    log_event(log, "worker.database_budget", logging.INFO if fits else logging.WARNING,
              pool=pool, concurrency=concurrency, may_open=ceiling,
              database_max_connections=usable, database_in_use=in_use, **details)


class RecoveryStep(bootsteps.StartStopStep):
    """Runs :func:`recovery_pass` now and every RECOVERY_INTERVAL seconds until stopped."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        pool = getattr(worker.pool_cls, "__module__", "").rsplit(".", 1)[-1]
        self.pool = {"thread": "threads"}.get(pool, pool)
        self.concurrency = int(worker.concurrency)
        if self.pool == "threads":
            # The worker's own concurrency (a `--concurrency` given to Celery wins over
            # WORKER_CONCURRENCY) sizes the process's database and HTTP pools, before
            # anything opens them.
            worker.app.runtime.stages_per_process = self.concurrency

    def start(self, worker: Any) -> None:
        interval = worker.app.runtime.settings.recovery_interval
        self._thread = threading.Thread(target=self._loop, name="recovery", daemon=True,
                                        args=(worker.app, interval, self.pool,
                                              self.concurrency))
        self._thread.start()

    def _loop(self, app: Celery, interval: float, pool: str, concurrency: int) -> None:
        try:
            check_connection_budget(app, pool, concurrency)
        except Exception as exc:  # PostgreSQL away: the recovery passes will say so too
            log_event(log, "worker.database_budget_failed", logging.WARNING,
                      error=repr(exc))
        while True:
            try:
                recovery_pass(app)
            except Exception as exc:  # PostgreSQL or Redis away: try again next interval
                log_event(log, "recovery.failed", logging.WARNING, error=repr(exc))
            if self._stop.wait(interval):
                return

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
