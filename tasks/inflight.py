"""The downstream calls a worker process has in flight, each one cut from outside its
thread: at its deadline, or when its job is failed by an operator.

Under a prefork pool, Celery's soft time limit and a revoke's signal interrupt a stage in
its own process. In a threads pool (the default: a stage mostly waits on its service, so
one process holds many) no signal can interrupt one thread, so the call is cut where it
waits, on its socket: a watchdog thread shuts the socket down (``SHUT_RDWR``), the blocked
read returns at once, and the service sees the client go away. Every call made through
:class:`CuttableAdapter` registers its connection with the calling thread's :class:`Call`.

    thread of a stage ── InFlight.track(task_id) ── HttpDownstream: call.until(deadline)
                                                      └─ POST (connection → call.conns)
    watchdog ── past a deadline, or aborted ──> shutdown every registered socket
    control command ``orchestrator_cancel`` ──> InFlight.abort(task_ids)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)

#: How often the watchdog cuts again the sockets of a call already cut: a connection
#: still being opened when the cut came gets its socket only afterwards.
RECUT_INTERVAL = 0.1

_current = threading.local()


class Call:
    """One stage run's downstream calls: its deadline, its connections, why it was cut."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.deadline: float | None = None
        self.cut_reason: str | None = None  # "timeout" or "cancelled", once cut
        self.conns: list[HTTPConnection] = []

    def cut_sockets(self) -> None:
        for conn in list(self.conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class InFlight:
    """The calls in flight in this process, by task id, and the watchdog that cuts them."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._lock = threading.Condition()
        self._watchdog: threading.Thread | None = None
        #: When the watchdog wakes next by itself; a call whose deadline comes earlier
        #: wakes it, a later one (nearly every call: deadlines are minutes away) does not.
        self._wake_at = 0.0

    @contextlib.contextmanager
    def track(self, key: str | None) -> Iterator[Call]:
        """The calls of this thread belong to ``key`` (a stage task's id) for the block."""
        call = Call(key)
        previous = getattr(_current, "call", None)
        _current.call = call
        with self._lock:
            self._calls[id(call)] = call
        try:
            yield call
        finally:
            _current.call = previous
            with self._lock:
                self._calls.pop(id(call), None)

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[Call]:
        """Cut this thread's calls made in the block at ``deadline`` (time.monotonic())."""
        call = getattr(_current, "call", None)
        with contextlib.ExitStack() as stack:
            if call is None:  # a call outside any stage task: tracked for the block only
                call = stack.enter_context(self.track(None))
            self._ensure_watchdog()
            with self._lock:
                call.deadline, call.conns = deadline, []
                if deadline < self._wake_at:
                    self._lock.notify_all()
            try:
                yield call
            finally:
                call.deadline, call.conns = None, []

    def abort(self, keys: Iterable[str], reason: str = "cancelled") -> int:
        """Cut the calls of these task ids now; how many there were in this process."""
        wanted = set(keys)
        with self._lock:
            found = [c for c in self._calls.values() if c.key in wanted]
            for call in found:
                call.cut_reason = call.cut_reason or reason
            self._lock.notify_all()
        for call in found:
            call.cut_sockets()
        self._ensure_watchdog()
        return len(found)

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._watch, name="inflight-watchdog",
                                                  daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for call in self._calls.values():
                    if (call.deadline is not None and call.cut_reason is None
                            and now >= call.deadline):
                        call.cut_reason = "timeout"
                cut = [c for c in self._calls.values()
                       if c.cut_reason is not None and c.deadline is not None]
                deadlines = [c.deadline for c in self._calls.values()
                             if c.deadline is not None and c.cut_reason is None]
            for call in cut:
                call.cut_sockets()
            with self._lock:
                # Deadlines set since the pass above count too: from here to the wait the
                # lock is held, and a call's deadline is set under it (InFlight.until).
                deadlines += [c.deadline for c in self._calls.values()
                              if c.deadline is not None and c.cut_reason is None]
                now = time.monotonic()
                self._wake_at = min(deadlines, default=now + 3600)
                if cut:
                    self._wake_at = min(self._wake_at, now + RECUT_INTERVAL)
                self._lock.wait(max(self._wake_at - now, 0.001))


def _register(conn: HTTPConnection) -> None:
    """Add ``conn`` to this thread's call; cut it at once if the call was cut already."""
    call = getattr(_current, "call", None)
    if call is None or call.deadline is None:
        return
    if conn not in call.conns:
        call.conns.append(conn)
    if call.cut_reason is not None:
        call.cut_sockets()


class _Cuttable:
    """Registers the connection at each request, and again once its socket exists."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _register(self)  # type: ignore[arg-type]
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _register(self)  # type: ignore[arg-type]


class _CuttableHTTPConnection(_Cuttable, HTTPConnection):
    pass


class _CuttableHTTPSConnection(_Cuttable, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _CuttableHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CuttableHTTPSConnection


class CuttableAdapter(HTTPAdapter):
    """requests' adapter whose connections register with the calling thread's Call."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
