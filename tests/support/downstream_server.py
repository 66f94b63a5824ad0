"""A real HTTP server playing the four downstream services, scripted per job and stage.

It runs in the test process on a free port; workers (other processes) call it over HTTP.
Every request is recorded. By default each stage answers at once with a valid output; a
test scripts other behaviour per (job, stage) — a status, a hang, a delay — by attempt.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STAGE_PATHS = {"/planning": "PLANNING", "/parsing": "PARSING", "/enriching": "ENRICHING",
               "/costing": "COSTING"}


@dataclass(frozen=True)
class Call:
    stage: str
    job_id: str
    attempt: int
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class Reply:
    """What to answer: ``status`` with ``body`` (a dict → JSON, a str → as is, None → the
    stage's default output) after ``delay`` seconds, or hang until ``release`` is set (or
    ``hang_for`` passes)."""

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


class ScriptedDownstream:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.scripts: dict[tuple[str, str], Callable[[int], Reply | None]] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
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

    def _record(self, call: Call) -> Reply:
        with self._lock:
            self.calls.append(call)
        script = self.scripts.get((call.job_id, call.stage))
        reply = script(call.attempt) if script else None
        return reply or Reply(body=default_output(call.stage, call.job_id,
                                                  call.body.get("input", {})))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without this, Nagle's algorithm and
            # the client's delayed ACK hold the body back ~40 ms on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stage = STAGE_PATHS.get(self.path, "?")
                call = Call(stage, str(body.get("job_id")), int(body.get("attempt", 0)), body,
                            {k: v for k, v in self.headers.items()}, time.time())
                reply = outer._record(call)
                if reply.release is not None:
                    reply.release.wait(reply.hang_for or 60)
                elif reply.hang_for:
                    time.sleep(reply.hang_for)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if body is None:
                    body = default_output(call.stage, call.job_id, call.body.get("input", {}))
                payload = body if isinstance(body, str) else json.dumps(body)
                data = payload.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker gave up waiting (a timeout test): nothing to answer

        return Handler
