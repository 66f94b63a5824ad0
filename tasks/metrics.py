"""A worker process's stage metrics leave it here: a daemon thread takes the deltas its
:class:`orchestrator.metrics.Recorder` counted and adds them up in Redis, in one
transaction (one round trip), every ``METRICS_FLUSH_INTERVAL`` seconds and at shutdown.
The stage's thread never waits on it.

Redis layout, under ``METRICS_KEY_PREFIX`` (``metrics:`` by default)::

    {prefix}counters              hash  "name|label|label" -> sum over every process
    {prefix}inflight:{process}    hash  stage -> stages in flight there; expires after
                                        three intervals unless refreshed, so a dead
                                        process's stages vanish
    {prefix}inflight:processes    set   the processes that wrote one (pruned by readers)

The API reads them at scrape time (:mod:`api.metrics`). Redis restarted empty reads as
every counter starting again from 0, which Prometheus's ``rate()``/``increase()`` take for
a counter reset, as after a process restart.

With ``WORKER_METRICS_PORT`` the worker also serves its own totals: each of its processes
(the pool children too, under prefork) writes its totals to a file of a directory of the
worker's own at each flush, and the main process serves their sum over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps, signals

from orchestrator.logs import log_event
from orchestrator.metrics import Key, Recorder, add_into, encode, families
from orchestrator.settings import WORKER_METRICS_DIR_ENV

log = logging.getLogger(__name__)

#: A process's in-flight counts outlive its last flush by this many intervals.
IN_FLIGHT_TTL_INTERVALS = 3


def counters_key(prefix: str) -> str:
    return f"{prefix}counters"


def processes_key(prefix: str) -> str:
    return f"{prefix}inflight:processes"


def in_flight_key(prefix: str, process: str) -> str:
    return f"{prefix}inflight:{process}"


def in_flight_ttl(interval: float) -> int:
    """Seconds (whole, for EXPIRE) a process's in-flight counts live without a flush."""
    return max(2, int(IN_FLIGHT_TTL_INTERVALS * interval + 1))


class RedisSink:
    """Adds one process's deltas up in Redis."""

    def __init__(self, client: redis.Redis, prefix: str, interval: float):
        self.client, self.prefix = client, prefix
        self.ttl = in_flight_ttl(interval)
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def write(self, deltas: Mapping[Key, float], in_flight: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=True)
        counters = counters_key(self.prefix)
        for key, amount in deltas.items():
            if isinstance(amount, int):
                pipe.hincrby(counters, encode(key), amount)
            else:
                pipe.hincrbyfloat(counters, encode(key), amount)
        if in_flight:
            own = in_flight_key(self.prefix, self.process)
            fields: dict[Any, Any] = dict(in_flight)
            pipe.hset(own, mapping=fields)
            pipe.expire(own, self.ttl)
            pipe.sadd(processes_key(self.prefix), self.process)
        if len(pipe):
            pipe.execute()

    def forget(self) -> None:
        """At shutdown: this process holds no stage any more."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(in_flight_key(self.prefix, self.process))
        pipe.srem(processes_key(self.prefix), self.process)
        pipe.execute()


class Flusher:
    """The thread that flushes a recorder every ``interval`` seconds; :meth:`stop` flushes
    a last time. A flush that fails (Redis away) gives its deltas back to the recorder, so
    they go with the next one; the failure is logged once per outage."""

    def __init__(self, recorder: Recorder, sink: RedisSink, interval: float,
                 snapshot_dir: Path | None = None):
        self.recorder, self.sink, self.interval = recorder, sink, interval
        self.snapshot = (snapshot_dir / f"{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
                         if snapshot_dir else None)
        self.totals: dict[Key, float] = {}
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="metrics-flusher",
                                        daemon=True)

    def start(self) -> Flusher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        deltas, in_flight = self.recorder.take()
        if self.snapshot is not None:
            add_into(self.totals, deltas)
            self._write_snapshot(in_flight)
        try:
            self.sink.write(deltas, in_flight)
        except Exception as exc:  # Redis away: counted again next time
            self.recorder.give_back(deltas)
            if not self._failing:
                log_event(log, "metrics.flush_failed", logging.WARNING, error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log_event(log, "metrics.flush_recovered")
        self._failing = False

    def _write_snapshot(self, in_flight: Mapping[str, int]) -> None:
        assert self.snapshot is not None
        data = {"pid": os.getpid(), "in_flight": in_flight,
                "counters": [[name, list(labels), value]
                             for (name, labels), value in self.totals.items()]}
        partial = self.snapshot.with_suffix(".tmp")
        try:
            partial.write_text(json.dumps(data))
            partial.replace(self.snapshot)
        except OSError as exc:  # the directory went away (shutdown)
            log_event(log, "metrics.snapshot_failed", logging.DEBUG, error=repr(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        self.flush()
        try:
            self.sink.forget()
        except Exception as exc:  # Redis away: the in-flight key expires by itself
            log_event(log, "metrics.forget_failed", logging.WARNING, error=repr(exc))


class SnapshotCollector:
    """The sum of the snapshots of one worker's processes, for its own endpoint: counters
    of every process that ever wrote one (a counter never goes down, and a dead pool
    child's counts stay counted), in-flight stages of those that wrote theirs within the
    last ``max_age`` seconds (as in Redis: a dead or stuck process's stages drop out)."""

    def __init__(self, directory: Path, max_age: float):
        self.directory, self.max_age = directory, max_age

    def collect(self) -> Iterator[Any]:
        totals: dict[Key, float] = {}
        in_flight: dict[str, float] = {}
        now = time.time()
        for path in sorted(self.directory.glob("*.json")):
            try:
                written = path.stat().st_mtime
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            add_into(totals, {(name, tuple(labels)): value
                              for name, labels, value in data["counters"]})
            if now - written <= self.max_age:
                for stage, count in data["in_flight"].items():
                    in_flight[stage] = in_flight.get(stage, 0) + count
        yield from families(totals, in_flight)


def flush_once(app: Any) -> None:
    """Add up what this process counted, once: for a command that is no worker
    (``orchestrator recover``), whose counts would otherwise go with it."""
    _flusher(app, None).stop()


def start_process_flusher(app: Any, snapshot_dir: Path | None) -> Flusher:
    """Start flushing this process's recorder (the main process, or a pool child after
    its fork)."""
    return _flusher(app, snapshot_dir).start()


def _flusher(app: Any, snapshot_dir: Path | None) -> Flusher:
    runtime = app.runtime
    settings = runtime.settings
    sink = RedisSink(runtime.redis, settings.metrics_key_prefix,
                     settings.metrics_flush_interval)
    return Flusher(runtime.metrics, sink, settings.metrics_flush_interval, snapshot_dir)


class MetricsStep(bootsteps.StartStopStep):
    """The worker's metrics: the main process's flusher (it records hard time limits and
    recovery passes, and every stage under the threads pool), the pool children's (started
    after each fork, :func:`tasks.factory`), and with ``WORKER_METRICS_PORT`` the worker's
    own endpoint. Its directory is made here, before the pool forks, so children know it.

    The last flush waits for ``worker_shutdown``, which Celery sends once the pool has
    drained, whatever order it stops its steps in: the ends of the stages a warm shutdown
    lets finish must be counted too."""

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        runtime = worker.app.runtime
        self.port: int | None = runtime.settings.worker_metrics_port
        self.directory: Path | None = None
        self.owned = False
        # One process of a few (cli.workers): the supervisor serves, from its directory.
        supervised = os.environ.get(WORKER_METRICS_DIR_ENV)
        if supervised and self.port is not None:
            self.directory, self.port = Path(supervised), None
        elif self.port is not None:
            self.directory = Path(tempfile.mkdtemp(prefix="orchestrator-worker-metrics-"))
            self.owned = True
        runtime.metrics_dir = self.directory
        self.flusher: Flusher | None = None
        self.server: Any = None

    def start(self, worker: Any) -> None:
        self.flusher = start_process_flusher(worker.app, self.directory)
        signals.worker_shutdown.connect(self.after_drain, sender=worker, weak=False)
        if self.port is not None and self.directory is not None:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(
                self.directory, in_flight_ttl(worker.app.runtime.settings.metrics_flush_interval)))
            self.server, _ = start_http_server(self.port, addr="0.0.0.0", registry=registry)
            log_event(log, "worker.metrics_serving", port=self.port)

    def stop(self, worker: Any) -> None:
        # (a cold shutdown sends no worker_shutdown: flush what there is now; the thread
        # goes on flushing while a warm one drains the pool)
        if self.flusher is not None:
            self.flusher.flush()

    def after_drain(self, sender: Any = None, **_: Any) -> None:
        """After the pool has drained: the last flush, then the endpoint goes."""
        if self.flusher is not None:
            self.flusher.stop()
            self.flusher = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.directory is not None and self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)
