"""tasks.inflight's watchdog sleeps until the earliest deadline of the calls in flight; a
call due before that wakes it, a later one does not need to. On real sockets."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

from tasks.inflight import InFlight, _register
from tests.support.processes import wait_for

PATIENCE = 30.0  # seconds a wait may take before the test fails; never a bound


def test_a_call_due_before_the_watchdog_wakes_is_cut_at_its_deadline() -> None:
    inflight = InFlight()
    started, release = threading.Event(), threading.Event()

    def an_hour_long_call() -> None:
        with inflight.track("long"), inflight.until(time.monotonic() + 3600):
            started.set()
            release.wait(PATIENCE)

    long = threading.Thread(target=an_hour_long_call)
    long.start()
    try:
        assert started.wait(PATIENCE)
        # Given the watchdog asleep until the first call's deadline, an hour away
        wait_for(lambda: inflight._wake_at > time.monotonic() + 1800, PATIENCE,
                 "the watchdog to sleep until the long call's deadline")
        # When a call due in 0.2 s waits on a socket that never answers
        ours, theirs = socket.socketpair()
        ours.settimeout(PATIENCE)  # a watchdog that never wakes fails the test here
        try:
            with inflight.track("short"), inflight.until(time.monotonic() + 0.2) as call:
                _register(SimpleNamespace(sock=ours))  # type: ignore[arg-type]
                received = ours.recv(1)
        finally:
            ours.close()
            theirs.close()
        # Then it was cut at its deadline, long before the watchdog's own wake-up
        assert received == b"" and call.cut_reason == "timeout"
    finally:
        release.set()
        long.join()
