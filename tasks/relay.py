"""The outbox relay inside every worker: two threads of the worker's main process, one
delivering terminal-event notifications, one sending the chains of started jobs that the
API could not send (:mod:`orchestrator.outbox`).

Why in the worker (a bootstep, like recovery) and not a process of its own: nothing more
to deploy or supervise, and as many relays as workers, sharing the rows through ``FOR
UPDATE SKIP LOCKED`` and leases, so a relay killed with its worker (kill -9 included)
leaves its rows to the others once their leases end. The enqueue relay must run where a
broker connection lives anyway, and a worker is where the chain is consumed: if no worker
runs, an unsent chain would only wait in the queue instead.

Why it never blocks stages: its own threads; its own engine of at most two PostgreSQL
connections (one per thread, never the stages' pool); its own HTTP session with
``NOTIFY_TIMEOUT`` on every try. A slow or dead receiver delays only other
notifications; an unreachable broker delays only the outbox's own sends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import requests
from celery import Celery, bootsteps

from db.engine import make_engine
from db.uow import PostgresUnitOfWork
from orchestrator.logs import log_event
from orchestrator.outbox import (
    DeliveryFailed,
    NotifyPolicy,
    deliver_events,
    send_enqueues,
    skip_events,
)
from orchestrator.settings import Settings
from tasks.chain import CeleryEnqueuer
from tasks.recovery import RELAY_CONNECTIONS

log = logging.getLogger(__name__)


class HttpNotifier:
    """``post(body, headers)`` to NOTIFY_URL; raises :class:`DeliveryFailed` unless 2xx."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        self.session = requests.Session()

    def __call__(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            response = self.session.post(self.url, data=body, headers=headers,
                                         timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            text = response.text[:200].strip()
            raise DeliveryFailed(f"HTTP {response.status_code}" + (f": {text}" if text else ""))


def policy(settings: Settings) -> NotifyPolicy:
    return NotifyPolicy(retry_base=settings.notify_retry_base,
                        retry_max=settings.notify_retry_max, timeout=settings.notify_timeout)


def notify_pass(uow: PostgresUnitOfWork, settings: Settings,
                notifier: HttpNotifier | None) -> int:
    """One pass of the notification relay: deliver the due events, or mark them skipped
    when no NOTIFY_URL is configured."""
    if notifier is None or not settings.notify_secret:
        return skip_events(uow)
    return deliver_events(uow, notifier, settings.notify_secret, policy(settings))


def enqueue_pass(uow: PostgresUnitOfWork, app: Celery, settings: Settings) -> int:
    """One pass of the enqueue relay."""
    return send_enqueues(uow, CeleryEnqueuer(app), retry_after=settings.outbox_interval,
                         lease=max(30.0, 10 * settings.outbox_interval))


class RelayStep(bootsteps.StartStopStep):
    """Runs :func:`notify_pass` and :func:`enqueue_pass` every OUTBOX_INTERVAL seconds
    (at once again while a pass found work) until the worker stops."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._engine: Any = None

    def start(self, worker: Any) -> None:
        app = worker.app
        settings: Settings = app.runtime.settings
        assert settings.database_url, "DATABASE_URL is required"
        self._engine = make_engine(settings.database_url, pool_size=RELAY_CONNECTIONS,
                                   max_connections=RELAY_CONNECTIONS)
        uow = PostgresUnitOfWork(self._engine)
        notifier = (HttpNotifier(settings.notify_url, settings.notify_timeout)
                    if settings.notify_url else None)
        log_event(log, "relay.started", notify="on" if notifier else "off (NOTIFY_URL unset)",
                  interval=settings.outbox_interval)
        passes: list[tuple[str, Callable[[], int]]] = [
            ("notify", lambda: notify_pass(uow, settings, notifier)),
            ("outbox", lambda: enqueue_pass(uow, app, settings)),
        ]
        for name, run in passes:
            thread = threading.Thread(target=self._loop, name=f"relay-{name}", daemon=True,
                                      args=(name, run, settings.outbox_interval))
            thread.start()
            self._threads.append(thread)

    def _loop(self, name: str, run: Callable[[], int], interval: float) -> None:
        while not self._stop.is_set():
            try:
                busy = run() > 0
            except Exception as exc:  # PostgreSQL away: try again next interval
                log_event(log, f"{name}.relay_failed", logging.WARNING, error=repr(exc))
                busy = False
            if not busy and self._stop.wait(interval):
                return

    def stop(self, worker: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._engine is not None:
            self._engine.dispose()
