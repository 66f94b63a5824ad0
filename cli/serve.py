"""Serving a Flask app factory under gunicorn from Python, with our JSON logs, and the
Prometheus multiprocess directory that lets a scrape add up every gunicorn worker."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication


class JsonLogger(glogging.Logger):
    """Gunicorn's logger, sending its records to the root logger's JSON handler."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers = []
            logger.propagate = True


class GunicornServer(BaseApplication):
    """Runs ``factory()`` in each gunicorn worker (after the fork, so each worker has its
    own connections)."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]):
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class MetricsDir:
    path: Path
    #: Made by us (a temporary directory), so removed when the server exits.
    owned: bool


def use_multiprocess_metrics() -> MetricsDir:
    """Put this process and every process it forks in prometheus_client's multiprocess
    mode, over a directory emptied now: ``PROMETHEUS_MULTIPROC_DIR`` when set (a directory
    of this server's own, e.g. a tmpfs in a container), else a new temporary directory.
    prometheus_client picks its mode once, when first imported, from that variable, so
    this runs before it is imported; counts left by an earlier run would otherwise be
    added to this one's."""
    given = os.environ.get(METRICS_DIR_VARIABLE)
    if not given and "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess "
                           "directory was set")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # prometheus_client's files, and only those
            stale.unlink()
        return MetricsDir(path, owned=False)
    path = Path(tempfile.mkdtemp(prefix="orchestrator-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(path)
    return MetricsDir(path, owned=True)


def _metrics_hooks(metrics: MetricsDir) -> dict[str, Callable[..., None]]:
    """Gunicorn server hooks (run in the master) for the multiprocess directory."""

    def child_exit(_server: Any, worker: Any) -> None:
        # Counters of a dead worker stay (a counter never goes down); its live gauges go.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(metrics.path))

    def on_exit(_server: Any) -> None:
        if metrics.owned:
            shutil.rmtree(metrics.path, ignore_errors=True)

    return {"child_exit": child_exit, "on_exit": on_exit}


def control_socket_path(port: int, environ: Mapping[str, str] | None = None) -> Path:
    """Where the gunicorn serving ``port`` puts its control socket (``gunicornc -s PATH``):
    gunicorn's own directory for it (``$XDG_RUNTIME_DIR``, else ``~/.gunicorn``), but a
    name of this server's own. Gunicorn's default, one ``gunicorn.ctl`` per user, is shared
    by every server of that user: the API and the reference services on one host (``up``,
    the tests, a bare-metal install) each took it from the other at start-up (the last one
    wins, so ``gunicornc`` reached the wrong server) and removed it at exit (stopping one
    left the other without any). Two servers cannot listen on one port, so the port names
    one."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        directory = Path(runtime)
    else:
        directory = Path(environ.get("HOME") or Path.home()) / ".gunicorn"
    return directory / f"orchestrator-{port}.ctl"


#: Request threads of each gunicorn process (api.app.API_CONNECTIONS holds a database
#: connection for each).
THREADS = 8


def serve(factory: Callable[[], Flask], *, host: str, port: int, workers: int,
          on_starting: Callable[[Any], None] | None = None,
          metrics: MetricsDir | None = None) -> None:
    """Serve ``factory()`` in ``workers`` gunicorn processes; with ``metrics`` (from
    :func:`use_multiprocess_metrics`), keep its directory as the workers come and go."""
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": THREADS,
        # SIGTERM: stop accepting, let in-flight requests finish for up to 30 s.
        "graceful_timeout": 30,
        "timeout": 60,
        "logger_class": JsonLogger,
        "accesslog": None,
        "control_socket": str(control_socket_path(port)),
    }
    if on_starting:
        options["on_starting"] = on_starting
    if metrics:
        options.update(_metrics_hooks(metrics))
    GunicornServer(factory, options).run()
