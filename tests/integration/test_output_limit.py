"""``MAX_STAGE_OUTPUT_BYTES``: a stage reply larger than the cap is a permanent error that
names the size, read without buffering more than the cap, over real sockets; and through
a real worker, the job fails with that message and nothing of the reply is stored."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from api.app import create_app
from orchestrator.errors import PermanentStageError, TransientStageError
from orchestrator.settings import Settings
from orchestrator.states import State
from tasks.downstream_client import CHUNK_BYTES, HttpDownstream
from tests.conftest import make_env
from tests.integration.conftest import Api
from tests.support.downstream_server import Reply
from tests.support.processes import start_worker
from tests.support.raw_server import RawServer

pytestmark = pytest.mark.integration
LIMIT = 64 * 1024


class BigReplies(RawServer):
    """A real HTTP server whose reply to each request is chosen by the test: a body of
    ``size`` bytes (a JSON object padded with spaces), sent with a Content-Length or
    chunked; ``size=None`` streams chunks forever. Counts what it managed to send."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/parsing"
        self.reply: tuple[int, int | None, bool] = (200, 0, True)

    def answer(self, conn: socket.socket) -> None:
        status, size, with_length = self.reply
        self.read_request(conn)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        try:
            if with_length and size is not None:
                conn.sendall(f"{head}Content-Length: {size}\r\n\r\n".encode())
                conn.sendall(_body(size))
                return
            conn.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            if size is None:  # forever
                chunk = b"1000\r\n" + b" " * 0x1000 + b"\r\n"
                conn.sendall(b"1\r\n{\r\n")
                while not self.stopped.is_set():
                    conn.sendall(chunk)
            body = _body(size)
            conn.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        except OSError:  # the client went away
            return


def _body(size: int) -> bytes:
    core = b'{"plan_reference": "p"'
    return core + b" " * (size - len(core) - 1) + b"}"


@pytest.fixture(scope="module")
def service() -> Iterator[BigReplies]:
    server = BigReplies()
    yield server
    server.stop()


def call(service: BigReplies, limit: int = LIMIT) -> dict:
    settings = Settings.from_env({"PLAN_INTERPRETER_URL": service.url, "PARSING_TIMEOUT": "30"})
    client = HttpDownstream(None, max_output_bytes=limit)
    return client(settings.stage(State.PARSING), uuid.uuid4(), 1, {}, None, 30)


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_a_reply_of_exactly_the_limit_is_taken(service, with_length):
    service.reply = (200, LIMIT, with_length)
    assert call(service)["plan_reference"] == "p"


def test_a_declared_size_over_the_limit_is_refused_before_reading(service):
    service.reply = (200, LIMIT + 1, True)
    with pytest.raises(PermanentStageError) as error:
        call(service)
    assert str(error.value) == (
        f"PARSING attempt 1/3: the reply of plan interpreter declares {LIMIT + 1} bytes; "
        f"MAX_STAGE_OUTPUT_BYTES is {LIMIT}")


def test_an_endless_reply_is_cut_at_the_limit_not_buffered_or_timed_out(service):
    # chunked, no length, never ending: only the cap can end this call before its timeout
    service.reply = (200, None, False)
    with pytest.raises(PermanentStageError) as error:
        call(service)
    message = str(error.value)
    assert message.startswith(
        f"PARSING attempt 1/3: the reply of plan interpreter went past {LIMIT} bytes, so "
        "reading stopped at ")
    read = int(message.split("stopped at ")[1].split(";")[0])
    assert LIMIT < read <= LIMIT + CHUNK_BYTES


def test_an_error_reply_past_the_limit_is_still_classified_by_its_status(service):
    service.reply = (503, 4 * LIMIT, False)
    with pytest.raises(TransientStageError) as error:
        call(service)
    assert "HTTP 503 from plan interpreter" in str(error.value)


def test_a_job_whose_stage_replies_too_much_fails_and_stores_none_of_it(
        module_database, redis_url, downstream, log_dir):
    env = make_env(module_database, redis_url, downstream, MAX_STAGE_OUTPUT_BYTES=4096)
    worker = start_worker("output-limit-worker", env, log_dir)
    try:
        api = Api(create_app(Settings.from_env(env)).test_client())
        job_id = uuid.uuid4()
        big = {"plan_reference": "p", "blob": "x" * 10_000}
        downstream.script(job_id, "PARSING", Reply(200, big))
        api.start(job_id)
        job = api.wait_state(job_id, "FAILED", "COMPLETED", timeout=60)
    finally:
        worker.stop()
    size = len(json.dumps(big).encode())
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == (f"PARSING attempt 1/3: the reply of plan interpreter "
                                    f"declares {size} bytes; MAX_STAGE_OUTPUT_BYTES is 4096")
    assert [c.attempt for c in downstream.calls_for(job_id, "PARSING")] == [1]  # permanent
    engine = create_engine(module_database.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as db:
            stored = db.execute(text(
                "SELECT status, output_data FROM stage_executions "
                "WHERE job_id = :j AND stage_name = 'PARSING'"), {"j": job_id}).all()
    finally:
        engine.dispose()
    assert [(s, o) for s, o in stored] == [("FAILED", None)]
