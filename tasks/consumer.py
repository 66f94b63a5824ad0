"""The worker's message consumer: Celery's own, except that an ack queued by a pool
thread wakes the event loop instead of waiting for its next timer.

Under ``-P threads`` (the default worker) a stage task ends in a pool thread, which does
not ack its message itself: it hands the ack to the consumer's event loop
(``Consumer.call_soon`` → ``Hub.call_soon``), which runs handed-over callbacks only
between two polls of its sockets. Nothing wakes that poll: it returns at its next timer,
about 2 s later (the event heartbeat). With ``acks_late`` and the prefetch limit
(``worker_prefetch_multiplier`` × concurrency), a worker whose reserved messages have all
ended gets nothing new from the broker until the acks go, so a worker at concurrency 2
moved two stages every 2 s whatever their length, and recovery took the queued jobs for
stalled ones (Celery issues #6941 and #4378; Celery acks in the calling thread for green
pools after 5.6.3, which is not safe for threads sharing one AMQP connection).

:class:`Consumer` adds a self-pipe to the event loop: a callback handed over from any
thread but the loop's own writes a byte, the poll returns, and the loop runs the ack on
its own thread at once. Prefork is unchanged in effect: its acks are handed over on the
loop's own thread, which never writes to the pipe.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from celery.worker import loops
from celery.worker.consumer import Consumer as CeleryConsumer


class LoopWaker:
    """A self-pipe an event hub polls: :meth:`wake` makes the hub's current poll return."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.loop_thread: int | None = None

    def register(self, hub: Any) -> None:
        """Poll the pipe in ``hub``, run by the calling thread (once per loop start: a
        reconnect resets the hub and forgets its readers)."""
        self.loop_thread = threading.get_ident()
        hub.add_reader(self._read, self._drain)

    def wake(self) -> None:
        """Make the poll return, unless called by the loop's own thread (which runs handed
        over callbacks before it polls again anyway)."""
        if threading.get_ident() == self.loop_thread:
            return
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._write, b"\0")

    def _drain(self, *_: Any) -> None:
        with contextlib.suppress(BlockingIOError):  # empty now
            while os.read(self._read, 4096):
                pass


class Consumer(CeleryConsumer):
    """Named by ``worker_consumer`` in ``celeryconfig``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waker = LoopWaker()
        if self.hub is not None:
            self.loop = self._waking_asynloop
        # Without a hub (green pools, transports without async support) Celery's synloop
        # stays as it is: acks wait up to its 2 s poll there. Neither is shipped or tested.

    def _waking_asynloop(self, obj: Any, connection: Any, consumer: Any, blueprint: Any,
                         hub: Any, *args: Any, **kwargs: Any) -> None:
        self.waker.register(hub)
        loops.asynloop(obj, connection, consumer, blueprint, hub, *args, **kwargs)

    def call_soon(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        handed = super().call_soon(p, *args, **kwargs)
        if self.hub is not None:
            self.waker.wake()
        return handed
