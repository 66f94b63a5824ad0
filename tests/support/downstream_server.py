"""A real HTTP server playing the four downstream services, scripted per job and stage.

It runs in the test process on a free port; workers (other processes) call it over HTTP.
Every request is recorded as a :class:`Call`, with when the service received it and how
it ended: its answer sent (``replied_at``), or the client gone first (``disconnected_at``:
the worker was killed, timed out or cancelled and closed the connection while its answer
hung). By default each stage answers at once with a valid output; a test scripts
other behaviour per (job, stage) — a status, a hang, a delay — by attempt.

Besides clock times, every reception and every end takes the next number of one counter
of the server's (``received``, ``ended``), so a test can say "A happened before B" without
comparing clocks: ``call.ended < later.received``, or ``downstream.mark() < call.ended``
for "after this point of the test".
"""

from __future__ import annotations

import itertools
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.processes import wait_for

STAGE_PATHS = {"/planning": "PLANNING", "/parsing": "PARSING", "/enriching": "ENRICHING",
               "/costing": "COSTING"}

#: How often a waiting reply looks whether its client went away.
WATCH_INTERVAL = 0.02


@dataclass(eq=False)
class Call:
    """One request as the service saw it. ``at`` (alias ``received_at``) is when it arrived;
    ``replied_at`` when its answer started going out, ``disconnected_at`` when the service
    found the client gone instead (before answering, or while writing the answer): once
    the call has ended, exactly one of the two is set. ``received``/``ended`` are the
    arrival and the end in the server's own order of events."""

    stage: str
    job_id: str
    attempt: int
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    received: int = 0
    status: int | None = None
    replied_at: float | None = None
    disconnected_at: float | None = None
    ended: int | None = None

    @property
    def received_at(self) -> float:
        return self.at

    @property
    def ended_at(self) -> float | None:
        return self.replied_at if self.replied_at is not None else self.disconnected_at

    @property
    def open(self) -> bool:
        """Received and not yet ended: the service is still working on it."""
        return self.ended is None

    def before(self, other: Call) -> bool:
        """This call had ended when ``other`` arrived: the two never overlapped."""
        return self.ended is not None and self.ended < other.received


@dataclass
class Reply:
    """What to answer: ``status`` with ``body`` (a dict → JSON, a str → as is, None → the
    stage's default output) after ``delay`` seconds, or hang until ``release`` is set (or
    ``hang_for`` passes). A client that goes away meanwhile gets no answer: the call ends
    as disconnected."""

    status: int = 200
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang_for: float = 0.0
    release: threading.Event | None = None


def default_output(stage: str, job_id: str, input: dict[str, Any]) -> dict[str, Any]:
    output: dict[str, Any] = {"stage_done": stage, "seen": input}
    if stage == "PLANNING":
        output["plan_reference"] = f"plan-{job_id}"
    if stage == "COSTING":
        output.update(result_reference=f"result-{job_id}", currency="USD",
                      monthly_cost_before=0, monthly_cost_after=1.5, monthly_cost_delta=1.5,
                      resources=[])
    return output


class _Server(ThreadingHTTPServer):
    #: The listen backlog (socketserver's default is 5): a burst opens a hundred
    #: connections at once, and past the backlog the kernel drops their SYNs (each client
    #: then waits a second to retry) or resets them, which a bare chain does not survive.
    request_queue_size = 1024


class ScriptedDownstream:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.scripts: dict[tuple[str, str], Callable[[int], Reply | None]] = {}
        self._lock = threading.Lock()
        self._order = itertools.count(1)
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"TERRAFORM_EXECUTION_URL": f"{self.base_url}/planning",
                "PLAN_INTERPRETER_URL": f"{self.base_url}/parsing",
                "PRICING_ENRICHER_URL": f"{self.base_url}/enriching",
                "COST_CALCULATOR_URL": f"{self.base_url}/costing"}

    def start(self) -> ScriptedDownstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, job_id: object, stage: str, by_attempt: dict[int, Reply] | Reply) -> None:
        """Answer ``stage`` of ``job_id`` with a Reply per attempt number (others: default),
        or with one Reply for every attempt."""
        if isinstance(by_attempt, Reply):
            reply = by_attempt
            self.scripts[(str(job_id), stage)] = lambda attempt: reply
        else:
            table = dict(by_attempt)
            self.scripts[(str(job_id), stage)] = table.get

    def calls_for(self, job_id: object, stage: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls
                    if c.job_id == str(job_id) and (stage is None or c.stage == stage)]

    def call(self, job_id: object, stage: str, attempt: int) -> Call | None:
        """The call of ``attempt`` of ``stage``, if the service received it."""
        return next((c for c in self.calls_for(job_id, stage) if c.attempt == attempt), None)

    def wait_call(self, job_id: object, stage: str, attempt: int,
                  timeout: float = 30) -> Call:
        """Wait until the service has received ``attempt`` of ``stage`` (fail after
        ``timeout``)."""
        return wait_for(lambda: self.call(job_id, stage, attempt), timeout,
                        f"{stage} attempt {attempt} of {job_id} to reach the service")

    def wait_ended(self, call: Call, timeout: float = 30) -> Call:
        """Wait until ``call`` has ended (answered, or its client gone)."""
        return wait_for(lambda: call if not call.open else None, timeout,
                        f"{call.stage} attempt {call.attempt} of {call.job_id} to end")

    def mark(self) -> int:
        """A point in the server's order of events: calls received or ended after this
        moment of the test have a greater ``received``/``ended``."""
        with self._lock:
            return next(self._order)

    def _record(self, call: Call) -> Reply:
        with self._lock:
            call.received = next(self._order)
            self.calls.append(call)
        script = self.scripts.get((call.job_id, call.stage))
        reply = script(call.attempt) if script else None
        return reply or Reply(body=default_output(call.stage, call.job_id,
                                                  call.body.get("input", {})))

    def _end(self, call: Call, *, replied: bool) -> None:
        with self._lock:
            now = time.time()
            if replied:
                call.replied_at = now
            else:
                call.disconnected_at = now
            call.ended = next(self._order)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without this, Nagle's algorithm and
            # the client's delayed ACK hold the body back ~40 ms on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def client_gone(self, timeout: float) -> bool:
                """Whether the client closed its end of the connection (it sends nothing
                more while it waits for an answer, so readable means closed)."""
                readable, _, _ = select.select([self.connection], [], [], timeout)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:  # reset by the peer
                    return True

            def wait(self, seconds: float, release: threading.Event | None) -> bool:
                """Wait ``seconds`` or until ``release`` is set; False if the client went
                away meanwhile."""
                deadline = time.monotonic() + seconds
                while not (release is not None and release.is_set()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if self.client_gone(min(left, WATCH_INTERVAL)):
                        return False
                return True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stage = STAGE_PATHS.get(self.path, "?")
                call = Call(stage, str(body.get("job_id")), int(body.get("attempt", 0)), body,
                            {k: v for k, v in self.headers.items()}, time.time())
                reply = outer._record(call)
                waited = True
                if reply.release is not None:
                    waited = self.wait(reply.hang_for or 60, reply.release)
                elif reply.hang_for:
                    waited = self.wait(reply.hang_for, None)
                if waited and reply.delay:
                    waited = self.wait(reply.delay, None)
                if not waited:  # nobody to answer any more
                    self.close_connection = True
                    outer._end(call, replied=False)
                    return
                body = reply.body
                if body is None:
                    body = default_output(call.stage, call.job_id, call.body.get("input", {}))
                payload = body if isinstance(body, str) else json.dumps(body)
                data = payload.encode()
                call.status = reply.status
                # The call ends when the answer starts going out: a client can only act on
                # it (call again, call the next stage) after this.
                outer._end(call, replied=True)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # the worker gave up waiting (a timeout test): nobody got the answer
                    self.close_connection = True
                    call.disconnected_at, call.replied_at = call.replied_at, None

        return Handler

