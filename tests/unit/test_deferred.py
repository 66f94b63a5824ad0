"""orchestrator.deferred: a heartbeat's thread starts when its first beat is due, never
for a stage that ended before."""

from __future__ import annotations

import threading
import time

from orchestrator.deferred import DeferredThread, start_at

PATIENCE = 10.0


def _deferred(name: str) -> tuple[DeferredThread, threading.Event, threading.Event]:
    ran, stop = threading.Event(), threading.Event()

    def target() -> None:
        ran.set()
        stop.wait(PATIENCE)

    return DeferredThread(target, name), ran, stop


def test_a_thread_starts_when_due_and_cancel_waits_for_its_end() -> None:
    deferred, ran, stop = _deferred("due")
    start_at(time.monotonic() + 0.05, deferred)
    assert ran.wait(PATIENCE), "the thread never started"
    assert deferred.started
    deferred.cancel(stop.set)
    assert deferred._thread is not None and not deferred._thread.is_alive()


def test_a_thread_cancelled_before_it_is_due_never_starts() -> None:
    early, early_ran, early_stop = _deferred("cancelled")
    later, later_ran, later_stop = _deferred("later")
    start_at(time.monotonic() + 0.2, early)
    start_at(time.monotonic() + 0.3, later)
    early.cancel(early_stop.set)
    # The starter takes them in order: once the later one runs, the early one was passed
    assert later_ran.wait(PATIENCE)
    later.cancel(later_stop.set)
    assert not early_ran.is_set() and not early.started
    assert early._thread is None  # no thread was even made


def test_an_earlier_thread_added_last_is_not_held_up_by_a_later_one() -> None:
    slow, slow_ran, slow_stop = _deferred("an hour away")
    soon, soon_ran, soon_stop = _deferred("soon")
    start_at(time.monotonic() + 3600, slow)
    start_at(time.monotonic() + 0.05, soon)
    try:
        assert soon_ran.wait(PATIENCE), "the starter kept waiting for the later one"
        assert not slow_ran.is_set()
    finally:
        soon.cancel(soon_stop.set)
        slow.cancel(slow_stop.set)
