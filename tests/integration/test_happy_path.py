"""A job started over the API runs through every stage on a real worker."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import DOWNSTREAM_TOKEN
from tests.integration.conftest import HAPPY_PATH, transitions

pytestmark = pytest.mark.integration


def test_job_runs_every_stage_in_order(api, worker, downstream, job_id):
    # Given a running worker and instant downstream services
    # When a job is started with an input
    response = api.start(job_id, {"plan": {"format_version": "1.2"}},
                         headers={"X-Correlation-ID": "corr-happy-1"})
    assert response.status_code == 202
    assert response.get_json()["current_state"] == "PLANNING"

    # Then it reaches COMPLETED through exactly the five transitions of the happy path (a
    # generous deadline: the shared worker may still be busy with another test's stages)
    job = api.wait_state(job_id, "COMPLETED", "FAILED", timeout=120)
    assert job["current_state"] == "COMPLETED", job
    assert transitions(job) == HAPPY_PATH
    assert [(s["stage_name"], s["attempt_number"], s["status"]) for s in job["stages"]] == [
        ("PLANNING", 1, "SUCCESS"), ("PARSING", 1, "SUCCESS"), ("ENRICHING", 1, "SUCCESS"),
        ("COSTING", 1, "SUCCESS")]
    assert job["plan_reference"] == f"plan-{job_id}"
    assert job["result_reference"] == f"result-{job_id}"
    assert job["result"]["result_reference"] == f"result-{job_id}"
    assert job["previous_state"] == "COSTING"
    assert job["retry_count"] == 0 and job["error_message"] is None
    assert job["started_at"] and job["completed_at"]

    # And each stage was called once, per the downstream contract, after the previous
    # one had answered, with that answer as its input
    calls = downstream.calls_for(job_id)
    assert [c.stage for c in calls] == ["PLANNING", "PARSING", "ENRICHING", "COSTING"]
    assert all(a.replied_at is not None and a.before(b) for a, b in itertools.pairwise(calls))
    assert calls[0].body["input"] == {"plan": {"format_version": "1.2"}}
    for previous, call in zip(calls, calls[1:], strict=False):
        assert call.body["input"]["stage_done"] == previous.stage
    for call in calls:
        assert call.body["job_id"] == str(job_id) and call.body["attempt"] == 1
        assert call.headers["Authorization"] == f"Bearer {DOWNSTREAM_TOKEN}"
        assert call.headers["Idempotency-Key"] == f"{job_id}:{call.stage}"
        assert call.headers["X-Correlation-ID"] == "corr-happy-1"

    # And the worker's log tells the story with the job and correlation ids on each line
    for stage in ("PLANNING", "PARSING", "ENRICHING", "COSTING"):
        assert worker.has_event("stage.started", job_id=str(job_id), stage=stage,
                                correlation_id="corr-happy-1")
    assert worker.has_event("job.transition", job_id=str(job_id), from_state="COSTING",
                            to_state="COMPLETED")
