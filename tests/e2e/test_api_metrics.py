"""`GET /metrics` of the API as a user starts it (`orchestrator api`: gunicorn, two worker
processes) counts the requests of every worker, whichever worker serves the scrape."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cli.embedded import free_port
from tests.conftest import API_TOKEN, make_env
from tests.support.processes import Service, start_api, wait_for

pytestmark = pytest.mark.integration

HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
ROUTE = "/internal/jobs/<job_id>/state"


def ask_for_a_missing_job(base: str) -> None:
    """One request on a connection of its own (no session), so any worker may take it."""
    response = requests.get(f"{base}/internal/jobs/{uuid.uuid4()}/state", headers=HEADERS,
                            timeout=10)
    assert response.status_code == 404, response.text


def serving_pids(api: Service) -> set[int]:
    return {e["pid"] for e in api.events() if e.get("event") == "api.request"}


def scrape(base: str) -> dict[str, list]:
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return {family.name: family.samples
            for family in text_string_to_metric_families(response.text)}


def test_a_scrape_counts_the_requests_of_every_worker(database_url, redis_url, downstream,
                                                      tmp_path: Path):
    # Given the API under gunicorn with two worker processes
    env = make_env(database_url, redis_url, downstream, ORCHESTRATOR_API_WORKERS=2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(env, tmp_path, port)
    try:
        # When requests arrive on separate connections until both workers have served some
        sent = 0

        def both_workers_served() -> bool:
            nonlocal sent
            ask_for_a_missing_job(base)
            sent += 1
            return len(serving_pids(api)) >= 2

        wait_for(both_workers_served, 60, "both gunicorn workers to serve a request",
                 interval=0)
        for _ in range(10):
            ask_for_a_missing_job(base)
            sent += 1
        assert len(serving_pids(api)) == 2
        # Then every scrape, whichever worker serves it, counts every one of them
        for _ in range(6):
            families = scrape(base)
            counted = sum(s.value for s in families["orchestrator_api_requests"]
                          if s.name == "orchestrator_api_requests_total"
                          and s.labels == {"method": "GET", "route": ROUTE, "status": "404"})
            assert counted == sent
            latencies = [s.value for s in families["orchestrator_api_request_seconds"]
                         if s.name == "orchestrator_api_request_seconds_count"
                         and s.labels == {"route": ROUTE}]
            assert latencies == [sent]
            # And the jobs gauge, read from PostgreSQL, is there as before
            states = {s.labels["state"] for s in families["orchestrator_jobs"]}
            assert states == {"UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING",
                              "COMPLETED", "FAILED"}
    finally:
        api.stop()
