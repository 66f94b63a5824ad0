"""A real HTTP receiver of terminal-event notifications, in the test process, on a port of
its own: it records every request (raw body, headers) and answers as scripted — 2xx, a
status (500), or a hang until released — and can go away (its port closed) and come back
on the same port."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cli.embedded import free_port


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    status: int | None = None  # what it answered; None: no answer (hung, client gone)

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class NotifyReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        #: Statuses to answer, in order, before answering ``default`` (204).
        self.script: list[int] = []
        self.default = 204
        #: While set to an Event, every request hangs until it is set.
        self.hang: threading.Event | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/jobs"

    def start(self) -> NotifyReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                record = Received(self.rfile.read(length), dict(self.headers.items()))
                with receiver.lock:
                    receiver.received.append(record)
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    hang = receiver.hang
                if hang is not None:
                    hang.wait(60)
                    return  # no answer: the client timed out or is gone
                record.status = status
                body = b'{"ok": false}' if status >= 300 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until :meth:`start` again."""
        if self._server is not None:
            if self.hang is not None:
                self.hang.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def for_job(self, job_id: object) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.payload.get("job_id") == str(job_id)]

    def acknowledged(self, job_id: object) -> list[Received]:
        return [r for r in self.for_job(job_id) if r.status is not None and r.status < 300]
