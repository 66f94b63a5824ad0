"""An operator's fail wins over the stage in flight: the stage cannot overwrite it and
the next stage never starts."""

from __future__ import annotations

import threading

from tests.integration.conftest import ended_without_writing, transitions
from tests.support.downstream_server import Reply
from tests.support.processes import wait_for


def test_fail_while_a_stage_runs_is_final(api, worker, downstream, job_id):
    # Given a job whose PARSING service hangs until we let it answer
    release = threading.Event()
    downstream.script(job_id, "PARSING", Reply(release=release))
    assert api.start(job_id).status_code == 202
    wait_for(lambda: downstream.calls_for(job_id, "PARSING"), 20, "PARSING to be called")

    # When an operator fails the job while PARSING is in flight
    response = api.fail(job_id, "wrong plan uploaded")
    assert response.status_code == 200
    assert response.get_json()["current_state"] == "FAILED"

    # And the service then answers successfully
    release.set()
    wait_for(lambda: ended_without_writing(worker, job_id), 20,
             "the stage to stop without writing")

    # Then the job stays FAILED with the operator's message, PARSING's attempt is closed as
    # cancelled, and ENRICHING was never called
    job = api.job(job_id)
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == "wrong plan uploaded"
    assert transitions(job) == [("UPLOADED", "PLANNING"), ("PLANNING", "PARSING"),
                                ("PARSING", "FAILED")]
    assert [(s["stage_name"], s["status"], s["error_message"]) for s in job["stages"]] == [
        ("PLANNING", "SUCCESS", None), ("PARSING", "FAILED", "cancelled")]
    assert not downstream.calls_for(job_id, "ENRICHING")
    assert job["completed_at"] is not None
