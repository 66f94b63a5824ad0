"""The resources of one worker or API process, made on first use and remade after a fork.

Celery's prefork pool forks children from the main process; a database pool or Redis
connection inherited across a fork would be shared by two processes, so each child calls
:meth:`Runtime.after_fork` and builds its own.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import redis
from sqlalchemy import Engine

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.metrics import Recorder
from orchestrator.settings import Settings
from tasks.downstream_client import HttpDownstream
from tasks.inflight import InFlight
from tasks.lock import RedisLocks


class Runtime:
    """Per-process collaborators built from one Settings object."""

    def __init__(self, settings: Settings):
        self.settings = settings
        #: Stages this process runs at once: the worker's concurrency under a threads
        #: pool (or in the API, which runs none), one in a prefork child.
        self.stages_per_process = settings.worker_concurrency
        #: Where this worker's processes write their metrics' totals for its own endpoint
        #: (``WORKER_METRICS_PORT``; set by :class:`tasks.metrics.MetricsStep`), or None.
        self.metrics_dir: Path | None = None

    def after_fork(self) -> None:
        """Drop what the parent process made; called in each new pool child
        (``worker_process_init``). The inherited engine is disposed without closing the
        parent's connections."""
        engine: Engine | None = self.__dict__.get("engine")
        if engine is not None:
            engine.dispose(close=False)
        # (the metrics too: the parent's pending counts are the parent's to flush)
        for name in ("engine", "uow", "redis", "locks", "inflight", "downstream", "metrics"):
            self.__dict__.pop(name, None)
        self.stages_per_process = 1

    @cached_property
    def engine(self) -> Engine:
        """Sized so that no stage waits for a connection: a stage holds one only inside its
        short statements, never while it waits on its service (when its heartbeat may take
        one for a moment instead); plus the recovery thread and one to spare. Connections
        are opened as stages need them at once, and kept: a burst that needed 25 will need
        them again, and opening one per statement above a small pool was PostgreSQL's
        fork and authentication 2.4 times a job under a burst (731 new sessions in a
        300-job burst, against 54 kept open; 26.5 -> 34.7 jobs/s, benchmarks/). The
        most it keeps is the most it may open, which the worker's start-up budget check
        (worker.database_budget) holds against PostgreSQL's max_connections."""
        assert self.settings.database_url, "DATABASE_URL is required"
        connections = self.stages_per_process + 2
        return make_engine(self.settings.database_url, pool_size=connections,
                           max_connections=connections)

    @cached_property
    def uow(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self.engine)

    @cached_property
    def redis(self) -> redis.Redis:
        assert self.settings.redis_url, "REDIS_URL is required"
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5,
                                    socket_connect_timeout=5, health_check_interval=30)

    @cached_property
    def locks(self) -> RedisLocks:
        return RedisLocks(self.redis, prefix=self.settings.lock_key_prefix,
                          ttl=self.settings.lock_ttl)

    @cached_property
    def inflight(self) -> InFlight:
        return InFlight()

    @cached_property
    def metrics(self) -> Recorder:
        """This process's stage metrics, in memory until flushed (:mod:`tasks.metrics`)."""
        return Recorder()

    @cached_property
    def downstream(self) -> HttpDownstream:
        return HttpDownstream(self.settings.downstream_token, self.inflight,
                              connections=self.stages_per_process,
                              max_output_bytes=self.settings.max_stage_output_bytes,
                              metrics=self.metrics)
