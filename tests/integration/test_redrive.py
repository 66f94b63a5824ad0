"""Redrive: a FAILED job runs again as a new job through every state, on a real worker,
reusing the stored outputs of the stages that succeeded (their services are not called
again) and calling the rest; idempotent with the given id, refused for anything else."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import HAPPY_PATH, transitions
from tests.support.downstream_server import Reply

pytestmark = pytest.mark.integration


def redrive(api, job_id, body=None):
    return api.client.post(f"/internal/jobs/{job_id}/redrive", json=body, headers=api.headers)


def failed_at_enriching(api, downstream) -> uuid.UUID:
    old = uuid.uuid4()
    downstream.script(old, "ENRICHING", Reply(400, {"error": "unknown region"}))
    api.start(old, {"sample": "web-stack"}, headers={"X-Correlation-ID": "corr-redrive"})
    job = api.wait_state(old, "FAILED", "COMPLETED", timeout=120)
    assert job["current_state"] == "FAILED", job
    return old


def test_a_redrive_reuses_what_succeeded_and_calls_the_rest(api, worker, downstream):
    old = failed_at_enriching(api, downstream)
    new = uuid.uuid4()

    response = redrive(api, old, {"job_id": str(new)})

    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {"job_id": str(new), "redriven_from": str(old),
                                   "resumes_at": "ENRICHING"}
    job = api.wait_state(new, "COMPLETED", "FAILED", timeout=120)
    assert job["current_state"] == "COMPLETED", job
    # every state walked, as any job
    assert transitions(job) == HAPPY_PATH
    # PLANNING and PARSING reused the old outputs, without calling their services
    assert [(s["stage_name"], s["status"], s["reused_from"]) for s in job["stages"]] == [
        ("PLANNING", "SUCCESS", str(old)), ("PARSING", "SUCCESS", str(old)),
        ("ENRICHING", "SUCCESS", None), ("COSTING", "SUCCESS", None)]
    assert [c.stage for c in downstream.calls_for(new)] == ["ENRICHING", "COSTING"]
    # ENRICHING got the old PARSING output as its input, and the plan reference carried on
    enriching = downstream.calls_for(new, "ENRICHING")[0]
    old_parsing = downstream.calls_for(old, "PARSING")[0]
    assert enriching.body["input"]["stage_done"] == "PARSING"
    assert enriching.body["input"]["seen"] == old_parsing.body["input"]
    assert job["plan_reference"] == f"plan-{old}"
    # the same input and correlation id; each job names the other
    assert enriching.headers["X-Correlation-ID"] == "corr-redrive"
    assert job["redriven_from"] == str(old) and job["redrives"] == []
    old_job = api.job(old)
    assert old_job["redrives"] == [str(new)] and old_job["redriven_from"] is None
    assert old_job["current_state"] == "FAILED"
    assert worker.has_event("stage.reused", job_id=str(new), stage="PARSING",
                            reused_from=str(old))

    # Repeating the call with the same id: 200, the same job, nothing new
    again = redrive(api, old, {"job_id": str(new)})
    assert again.status_code == 200 and again.get_json() == response.get_json()
    assert len(downstream.calls_for(new)) == 2
    assert api.job(old)["redrives"] == [str(new)]


def test_a_redrive_without_an_id_gets_a_fresh_one(api, worker, downstream):
    old = failed_at_enriching(api, downstream)
    first = redrive(api, old)
    assert first.status_code == 202
    new = first.get_json()["job_id"]
    assert new != str(old)
    assert api.wait_state(new, "COMPLETED", "FAILED", timeout=120)["redriven_from"] == str(old)


def test_only_a_failed_job_can_be_redriven(api, worker, downstream):
    done = uuid.uuid4()
    api.start(done)
    api.wait_state(done, "COMPLETED", timeout=120)
    refused = redrive(api, done)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "job_not_failed"
    assert "COMPLETED" in refused.get_json()["error"]["message"]
    assert api.job(done)["redrives"] == []

    running = uuid.uuid4()
    downstream.script(running, "PLANNING", Reply(hang_for=60))
    api.start(running)
    assert redrive(api, running).status_code == 409
    api.fail(running, "done with this test")

    unknown = redrive(api, uuid.uuid4())
    assert unknown.status_code == 404


def test_an_id_taken_by_another_job_or_a_bad_body_is_refused(api, worker, downstream):
    old = failed_at_enriching(api, downstream)
    other = uuid.uuid4()
    api.start(other)
    taken = redrive(api, old, {"job_id": str(other)})
    assert taken.status_code == 409
    assert taken.get_json()["error"]["code"] == "job_id_in_use"
    for body in ({"job_id": "nope"}, {"job_id": 5}, {"job_id": str(uuid.uuid4()), "x": 1}):
        bad = redrive(api, old, body)
        assert bad.status_code == 400, body
        assert bad.get_json()["error"]["code"] == "invalid_body"
    assert api.job(old)["redrives"] == []
