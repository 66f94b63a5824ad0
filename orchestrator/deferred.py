"""Threads started only when their first work is due: a stage's heartbeat.

A stage's heartbeat does its first beat ``LOCK_TTL / 3`` seconds after the stage starts
(100 s with the default LOCK_TTL), and most stages end long before that. Starting a
thread for each of them anyway, and joining it when the stage ends, was a tenth of a
millisecond of CPU a stage, under the GIL the whole worker shares. Here one process-wide
starter thread keeps the pending ones in a heap by due time and starts each one's own
thread only when it is due; a stage that ends first is never given a thread.

Each due heartbeat still gets its own thread, as before: one heartbeat stuck on a slow
PostgreSQL or Redis must not delay another's renewal past its lock's TTL.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable

_PENDING, _STARTED, _CANCELLED = range(3)


class DeferredThread:
    """A thread that :func:`start_at` starts at a time of the monotonic clock, unless
    :meth:`cancel` comes first. ``cancel`` returns once the thread (if it was started) has
    ended, so it needs its own way to be told to stop (an Event it waits on)."""

    def __init__(self, target: Callable[[], None], name: str):
        # The Thread object itself is made only when it starts: most never do.
        self._target, self._name = target, name
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._state = _PENDING

    @property
    def started(self) -> bool:
        return self._state == _STARTED

    def _start(self) -> None:
        with self._guard:
            if self._state != _PENDING:
                return
            self._state = _STARTED
            self._thread = threading.Thread(target=self._target, name=self._name, daemon=True)
            self._thread.start()

    def cancel(self, stop: Callable[[], None]) -> None:
        """Calls ``stop`` (which makes the thread's target return), then: if the thread was
        started, waits for it to end; if not, makes sure it never starts."""
        stop()
        with self._guard:
            started = self._state == _STARTED
            if not started:
                self._state = _CANCELLED
        if started and self._thread is not None:
            self._thread.join()


class _Starter:
    """The process's starter thread and its heap of (due time, order, thread)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._heap: list[tuple[float, int, DeferredThread]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="heartbeat-starter",
                                        daemon=True)
        self._thread.start()

    def add(self, due: float, deferred: DeferredThread) -> None:
        with self._wake:
            heapq.heappush(self._heap, (due, next(self._order), deferred))
            if self._heap[0][2] is deferred:  # earlier than what the starter waits for
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                _, _, deferred = heapq.heappop(self._heap)
            deferred._start()  # outside the heap's lock: a thread's start takes a while


_starter: _Starter | None = None
_starter_guard = threading.Lock()


def start_at(due: float, deferred: DeferredThread) -> None:
    """Start ``deferred``'s thread at ``due`` (``time.monotonic()``), unless cancelled."""
    global _starter
    starter = _starter
    if starter is None or starter.pid != os.getpid():  # first use, or a forked child
        with _starter_guard:
            if _starter is None or _starter.pid != os.getpid():
                _starter = _Starter()
            starter = _starter
    starter.add(due, deferred)
