"""Serving a Flask app factory under gunicorn from Python, with our JSON logs."""

from __future__ import annotations

from collections.abc import Callable
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


def serve(factory: Callable[[], Flask], *, host: str, port: int, workers: int,
          on_starting: Callable[[Any], None] | None = None) -> None:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 8,
        # SIGTERM: stop accepting, let in-flight requests finish for up to 30 s.
        "graceful_timeout": 30,
        "timeout": 60,
        "logger_class": JsonLogger,
        "accesslog": None,
    }
    if on_starting:
        options["on_starting"] = on_starting
    GunicornServer(factory, options).run()
