"""Every request's ``api.request`` log line carries its correlation id, the one given in
``X-Correlation-ID`` or the one made for it, and the response says which: rejected
requests (401, 404, 405, 413) included. The real app over real PostgreSQL and Redis."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.logs import configure_logging
from tests.conftest import API_TOKEN

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TOO_BIG = b'{"input": "' + b"x" * (65 * 1024) + b'"}'

# (status, method, path, headers, body): one request per way of being answered
REQUESTS = [
    (200, "get", "/internal/jobs", AUTH, None),
    (401, "get", "/internal/jobs", {}, None),
    (401, "post", "/internal/jobs/{job}/start", {"Authorization": "Bearer wrong"}, None),
    (404, "get", "/internal/jobs/{job}", AUTH, None),
    (404, "get", "/internal/no-such-route", AUTH, None),
    (405, "delete", "/internal/jobs", AUTH, None),
    (413, "post", "/internal/jobs/{job}/start", AUTH, TOO_BIG),
]


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The product's JSON log lines, as the product writes them; the root logger is put
    back as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("INFO", stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def request_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("event") == "api.request"]


def send(client: Any, method: str, path: str, headers: dict[str, str], body: bytes | None
         ) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    return getattr(client, method)(path.format(job=uuid.uuid4()), **kwargs)


@pytest.mark.parametrize(("status", "method", "path", "headers", "body"), REQUESTS)
def test_a_given_correlation_id_is_logged_and_returned(idle_api, log_lines, status, method,
                                                       path, headers, body):
    given = f"corr-{status}-{uuid.uuid4().hex[:8]}"
    # When a request comes with its correlation id
    response = send(idle_api.client, method, path, {**headers, "X-Correlation-ID": given},
                    body)
    # Then whatever the answer, its log line and the response carry that id
    assert response.status_code == status
    assert response.headers["X-Correlation-ID"] == given
    (line,) = request_lines(log_lines)
    assert (line["status"], line["method"]) == (status, method.upper())
    assert line["correlation_id"] == given


@pytest.mark.parametrize(("status", "method", "path", "headers", "body"), REQUESTS)
def test_a_made_correlation_id_is_logged_and_returned(idle_api, log_lines, status, method,
                                                      path, headers, body):
    # When a request comes without a correlation id
    response = send(idle_api.client, method, path, headers, body)
    # Then one is made for it, returned, and on its log line
    assert response.status_code == status
    made = response.headers.get("X-Correlation-ID")
    assert made and uuid.UUID(made)
    (line,) = request_lines(log_lines)
    assert line["status"] == status
    assert line["correlation_id"] == made
