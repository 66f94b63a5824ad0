"""A stage's downstream call is cut from outside its thread, over a real socket: at its
deadline however the service trickles its reply, and at once when its job is cancelled.
The service is a real local TCP server that records when the client went away."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from orchestrator.errors import StageCancelled, StageTimeout
from orchestrator.settings import Settings
from orchestrator.states import State
from tasks.downstream_client import HttpDownstream
from tasks.inflight import InFlight
from tests.support.processes import wait_for
from tests.support.raw_server import RawServer

pytestmark = pytest.mark.integration


class TricklingService(RawServer):
    """Answers every request with headers at once, then one body byte every ``gap`` s,
    forever: each byte resets a read timeout, so only a deadline on the whole call can
    end it. Records the moment each client hung up."""

    def __init__(self, gap: float = 0.2):
        self.gap = gap
        self.received = threading.Event()
        self.hung_up = threading.Event()
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        self.read_request(conn)
        self.received.set()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{")
        try:
            while not self.stopped.wait(self.gap):
                conn.sendall(b" ")
        except OSError:  # the client has gone away
            self.hung_up.set()


@pytest.fixture
def service() -> Iterator[TricklingService]:
    server = TricklingService()
    yield server
    server.stop()


def planning_spec(port: int):
    settings = Settings.from_env({"TERRAFORM_EXECUTION_URL": f"http://127.0.0.1:{port}/plan",
                                  "PLANNING_TIMEOUT": "1"})
    return settings.stage(State.PLANNING)


def test_a_reply_that_trickles_past_the_deadline_is_cut_there(service):
    # Given a service that keeps a reply coming, a byte every 0.2 s, never finishing
    spec = planning_spec(service.port)
    downstream = HttpDownstream(None, InFlight())
    # When a stage calls it with one second left
    with pytest.raises(StageTimeout, match="timed out"):
        downstream(spec, uuid.uuid4(), 1, {}, None, timeout=1.0)
    # Then the call was cut, and the service saw the client go away
    wait_for(service.hung_up.is_set, 30, "the service to see the client go away")


def test_a_cancelled_call_is_cut_at_once_and_reported_as_cancelled(service):
    # Given a stage task whose call waits on a service that will not finish for an hour
    spec = planning_spec(service.port)
    inflight = InFlight()
    downstream = HttpDownstream(None, inflight)
    raised: list[BaseException] = []

    def stage() -> None:
        with inflight.track("task-1"):
            try:
                downstream(spec, uuid.uuid4(), 1, {}, None, timeout=3600)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                raised.append(exc)

    thread = threading.Thread(target=stage)
    thread.start()
    wait_for(service.received.is_set, 30, "the call to reach the service")
    # When its task is cancelled (another task id is left alone)
    assert inflight.abort(["task-0"]) == 0
    assert inflight.abort(["task-1"]) == 1
    # Then the call ends, as cancelled rather than timed out, and the service sees it go
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], StageCancelled), raised
    wait_for(service.hung_up.is_set, 30, "the service to see the client go away")
