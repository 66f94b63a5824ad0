"""Fixtures of the integration tests: one shared worker per session (as Celery's own
pytest plugin does), the API app over the same services, and helpers to drive jobs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from orchestrator.settings import Settings
from tests.conftest import API_TOKEN, make_env
from tests.support.downstream_server import Reply
from tests.support.processes import Service, start_worker, wait_for


@pytest.fixture(scope="session")
def settings(orchestrator_env: dict[str, str]) -> Settings:
    return Settings.from_env(orchestrator_env)


@pytest.fixture(scope="session")
def worker(orchestrator_env: dict[str, str], log_dir: Path) -> Iterator[Service]:
    service = start_worker("shared-worker", orchestrator_env, log_dir, concurrency=2)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def app_client(settings: Settings) -> FlaskClient:
    app = create_app(settings)
    return app.test_client()


class Api:
    """The internal API through Flask's test client, with the bearer token."""

    def __init__(self, client: FlaskClient):
        self.client = client
        self.headers = {"Authorization": f"Bearer {API_TOKEN}"}

    def start(self, job_id: object, input: dict[str, Any] | None = None, **kw: Any) -> Any:
        body = {"input": input} if input is not None else None
        return self.client.post(f"/internal/jobs/{job_id}/start", json=body,
                                headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def fail(self, job_id: object, message: str = "operator says stop") -> Any:
        return self.client.post(f"/internal/jobs/{job_id}/fail",
                                json={"error_message": message}, headers=self.headers)

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def job(self, job_id: object) -> dict[str, Any]:
        response = self.get(f"/internal/jobs/{job_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def wait_state(self, job_id: object, *states: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (lambda j: j if j["current_state"] in states else None)(
            self.job(job_id)), timeout, f"job {job_id} to reach {states}")


@pytest.fixture(scope="session")
def api(app_client: FlaskClient) -> Api:
    return Api(app_client)


@pytest.fixture(scope="module")
def idle_settings(module_database: str, redis_url: str, downstream: Any) -> Settings:
    """A deployment of the module's own that no worker serves: its own database and a
    queue nobody consumes, so a started job stays in PLANNING whatever other tests run,
    and nothing it leaves behind reaches another test (or the shared worker's recovery)."""
    return Settings.from_env(make_env(module_database, redis_url, downstream))


@pytest.fixture(scope="module")
def idle_api(idle_settings: Settings) -> Api:
    """:class:`Api` over :func:`idle_settings`: the real app, the real Celery enqueuer."""
    return Api(create_app(idle_settings).test_client())


@pytest.fixture
def job_id() -> uuid.UUID:
    return uuid.uuid4()


HAPPY_PATH = [("UPLOADED", "PLANNING"), ("PLANNING", "PARSING"), ("PARSING", "ENRICHING"),
              ("ENRICHING", "COSTING"), ("COSTING", "COMPLETED")]


def transitions(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["from_state"], t["to_state"]) for t in job["transitions"]]


def ended_without_writing(worker, job_id) -> bool:
    """The worker's stage for ``job_id`` stopped and wrote nothing: its compare-and-set
    found the job changed (fenced out), or a cancellation interrupted it."""
    return any(worker.has_event(e, job_id=str(job_id))
               for e in ("stage.fenced_out", "stage.interrupted"))


def start_with_a_hang(api: Api, downstream, job_id: object, stage: str,
                      hang_for: float = 60) -> threading.Event:
    """Start ``job_id`` with ``stage``'s service hanging on attempt 1 (later attempts answer
    normally); return once that call has arrived, with the event that lets it answer."""
    release = threading.Event()
    downstream.script(job_id, stage, {1: Reply(release=release, hang_for=hang_for)})
    assert api.start(job_id).status_code == 202
    wait_for(lambda: downstream.calls_for(job_id, stage), 30, f"{stage} to be called")
    return release
