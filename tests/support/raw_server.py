"""A TCP server for tests that must write HTTP by hand (a reply that trickles, one that
never ends, a length that lies): it accepts on a free port of 127.0.0.1 and answers each
connection in a thread of its own with :meth:`RawServer.answer`, until :meth:`stop`."""

from __future__ import annotations

import socket
import threading


class RawServer:
    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            self.answer(conn)

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def read_request(conn: socket.socket) -> bytes:
        """The whole request, headers and Content-Length body. (Answering and closing
        with some of it unread would make the kernel reset the connection, and the client
        could see the reset instead of the answer.)"""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()
