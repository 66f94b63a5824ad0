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


def stage_rows(job: dict[str, Any], stage: str) -> list[tuple[int, str, str | None]]:
    """(attempt number, status, error message) of each of the job's attempts of ``stage``."""
    return [(s["attempt_number"], s["status"], s["error_message"])
            for s in job["stages"] if s["stage_name"] == stage]


#: The last line of a stage run, logged by its own process after everything else it did.
RUN_ENDS = ("lock.released", "lock.release_interrupted", "lock.release_failed", "lock.lost")
#: What a run that wrote something logs.
WRITES = ("stage.succeeded", "stage.retry_scheduled", "stage.gave_up")


def stage_pid(worker: Service, job_id: object, stage: str, attempt: int) -> int | None:
    """The pid of the process that started ``attempt`` of ``stage`` (its pool process
    under prefork), from its ``stage.started`` line; None until then."""
    for event in worker.events():
        if (event.get("event") == "stage.started" and event.get("job_id") == str(job_id)
                and event.get("stage") == stage and event.get("attempt") == attempt):
            return int(event["pid"])
    return None


def attempt_run(worker: Service, job_id: object, stage: str, attempt: int
                ) -> list[dict] | None:
    """The log lines of the run of ``attempt`` of ``stage``, in the pool process that
    started it, from its ``stage.started`` to the lock's release at the very end of the
    run (the runner's ``finally``); None until that end is logged. Unlike a
    ``stage.fenced_out`` line (the heartbeat logs one too, while the stage still runs),
    this end means the run has nothing left to do."""
    events = worker.events()
    started = next((i for i, e in enumerate(events)
                    if e.get("event") == "stage.started" and e.get("job_id") == str(job_id)
                    and e.get("stage") == stage and e.get("attempt") == attempt), None)
    if started is None:
        return None
    pid = events[started]["pid"]
    run = [e for e in events[started:] if e.get("pid") == pid
           and e.get("job_id") == str(job_id)]
    for n, event in enumerate(run):
        if event.get("event") in RUN_ENDS and event.get("stage") == stage and not (
                event.get("event") == "lock.lost"  # the heartbeat's, not the release's
                and "before release" not in event.get("error", "")):
            return run[:n + 1]
    return None


def wrote_nothing(run: list[dict]) -> bool:
    """The run ended without writing: fenced out, interrupted, cancelled or discarded."""
    names = [e.get("event") for e in run]
    return not set(names) & set(WRITES) and bool(
        {"stage.fenced_out", "stage.interrupted", "stage.skipped", "stage.cancelled"} & set(names))


def start_with_a_hang(api: Api, downstream, job_id: object, stage: str,
                      hang_for: float = 60) -> threading.Event:
    """Start ``job_id`` with ``stage``'s service hanging on attempt 1 (later attempts answer
    normally); return once that call has arrived, with the event that lets it answer."""
    release = threading.Event()
    downstream.script(job_id, stage, {1: Reply(release=release, hang_for=hang_for)})
    assert api.start(job_id).status_code == 202
    wait_for(lambda: downstream.calls_for(job_id, stage), 30, f"{stage} to be called")
    return release
