"""The worker's consumer wakes its event loop when a pool thread hands it an ack.

Checked on a real kombu Hub: whether its poll returned because of the waker's pipe is a
fact of the poll, not of the clock, so nothing here bounds a duration."""

from __future__ import annotations

import threading
from typing import Any

from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.asynchronous import Hub

import celeryconfig
from tasks.consumer import Consumer, LoopWaker


class CountingWaker(LoopWaker):
    def __init__(self) -> None:
        super().__init__()
        self.woken = 0

    def _drain(self, *args: Any) -> None:
        self.woken += 1
        super()._drain(*args)


def _hand_over_from_a_pool_thread(hub: Hub, waker: LoopWaker, ran: list[str]) -> None:
    """What Consumer.call_soon does when a stage ends in a pool thread."""
    def from_pool() -> None:
        hub.call_soon(lambda: ran.append("ack"))
        waker.wake()

    thread = threading.Thread(target=from_pool)
    thread.start()
    thread.join()


def _run_until(loop: Any, condition: Any, limit: int = 50) -> None:
    for _ in range(limit):
        if condition():
            return
        next(loop)


def test_an_ack_handed_over_by_another_thread_wakes_the_loops_poll() -> None:
    hub, waker, ran = Hub(), CountingWaker(), []
    try:
        waker.register(hub)
        _hand_over_from_a_pool_thread(hub, waker, ran)
        _run_until(hub.create_loop(), lambda: ran)
        # The ack ran, and the poll before it returned for the waker's pipe (without the
        # wake-up it returns only at its timeout, with no event)
        assert ran == ["ack"]
        assert waker.woken >= 1
    finally:
        hub.close()


def test_the_loops_own_thread_does_not_wake_itself() -> None:
    hub, waker, ran = Hub(), CountingWaker(), []
    try:
        waker.register(hub)
        hub.call_soon(lambda: ran.append("ack"))
        waker.wake()  # on the loop's thread: it runs handed-over callbacks before polling
        _run_until(hub.create_loop(), lambda: ran)
        assert ran == ["ack"]
        assert waker.woken == 0
    finally:
        hub.close()


def test_many_wake_ups_never_block_the_pool_thread() -> None:
    # A pool thread must never wait on the pipe: past its buffer, wakes are dropped, and
    # one read empties it.
    hub, waker = Hub(), CountingWaker()
    try:
        waker.register(hub)

        def flood() -> None:
            for _ in range(200_000):
                waker.wake()

        thread = threading.Thread(target=flood)
        thread.start()
        thread.join()
        _run_until(hub.create_loop(), lambda: waker.woken)
        assert waker.woken == 1
    finally:
        hub.close()


def test_the_consumers_call_soon_wakes_its_loop() -> None:
    # The consumer as the worker wires it (its __init__ needs a whole worker): its hub,
    # its waker, and call_soon called by a pool thread as Celery's ack promise does
    consumer = object.__new__(Consumer)
    consumer.hub, consumer.waker, ran = Hub(), CountingWaker(), []
    try:
        consumer.waker.register(consumer.hub)
        thread = threading.Thread(target=consumer.call_soon, args=(ran.append, "ack"))
        thread.start()
        thread.join()
        _run_until(consumer.hub.create_loop(), lambda: ran)
        assert ran == ["ack"]
        assert consumer.waker.woken >= 1
    finally:
        consumer.hub.close()


def test_the_worker_runs_this_consumer() -> None:
    consumer = symbol_by_name(celeryconfig.worker_consumer)
    assert consumer is Consumer
    assert issubclass(consumer, CeleryConsumer)
