"""Recovery inside every worker: a pass at start-up, then every ``RECOVERY_INTERVAL``.

A worker bootstep runs the passes in a thread of the worker's main process, so there is
no extra process to deploy (no beat) and as many recoverers as workers; the passes are
safe to run concurrently (``FOR UPDATE SKIP LOCKED`` in :func:`orchestrator.service.recover`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from orchestrator.logs import log_event
from orchestrator.service import recover
from tasks.chain import CeleryEnqueuer

log = logging.getLogger(__name__)


def recovery_pass(app: Celery) -> int:
    """One pass; returns how many jobs it resumed."""
    runtime = app.runtime
    resumed = recover(runtime.uow, runtime.locks, CeleryEnqueuer(app),
                      stale_after=runtime.settings.recovery_stale_after)
    log_event(log, "recovery.pass", logging.INFO if resumed else logging.DEBUG,
              resumed=len(resumed))
    return len(resumed)


class RecoveryStep(bootsteps.StartStopStep):
    """Runs :func:`recovery_pass` now and every RECOVERY_INTERVAL seconds until stopped."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        interval = worker.app.runtime.settings.recovery_interval
        self._thread = threading.Thread(target=self._loop, args=(worker.app, interval),
                                        name="recovery", daemon=True)
        self._thread.start()

    def _loop(self, app: Celery, interval: float) -> None:
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
