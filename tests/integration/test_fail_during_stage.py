"""An operator's fail wins over the stage in flight: the stage cannot overwrite it and
the next stage never starts, even when the stage gets its service's answer afterwards."""

from __future__ import annotations

import threading

import pytest

from api.app import create_app
from tests.integration.conftest import Api, attempt_run, transitions, wrote_nothing
from tests.support.downstream_server import Reply
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uncancelling_api(settings):
    """The API whose fail does not interrupt the stage (as when the revoke is lost, or
    reaches the worker late): the answer the stage gets afterwards is what must not win."""
    from tasks.chain import make_enqueuer

    celery = make_enqueuer(settings)

    def enqueue(*args, **kwargs):  # the chain as usual, but no `cancel` to fail with
        celery(*args, **kwargs)

    return Api(create_app(settings, enqueuer=enqueue).test_client())


def test_fail_while_a_stage_runs_is_final(uncancelling_api, worker, downstream, job_id):
    api = uncancelling_api
    # Given a job whose PARSING service hangs until we let it answer
    release = threading.Event()
    downstream.script(job_id, "PARSING", {1: Reply(release=release, hang_for=600)})
    try:
        assert api.start(job_id).status_code == 202
        # (a generous deadline: the shared worker may still be busy with another test's
        # stages)
        call = downstream.wait_call(job_id, "PARSING", 1, timeout=120)

        # When an operator fails the job while PARSING is in flight
        response = api.fail(job_id, "wrong plan uploaded")
        assert response.status_code == 200
        assert response.get_json()["current_state"] == "FAILED"
    finally:
        # And the service then answers successfully
        release.set()
    downstream.wait_ended(call)
    run = wait_for(lambda: attempt_run(worker, job_id, "PARSING", 1), 60,
                   "the PARSING run to end")

    # Then the stage got that answer and wrote nothing: the job stays FAILED with the
    # operator's message, PARSING's attempt is closed as cancelled, and ENRICHING was
    # never called
    assert call.replied_at is not None and call.status == 200
    assert wrote_nothing(run), run
    job = api.job(job_id)
    assert job["current_state"] == "FAILED"
    assert job["error_message"] == "wrong plan uploaded"
    assert transitions(job) == [("UPLOADED", "PLANNING"), ("PLANNING", "PARSING"),
                                ("PARSING", "FAILED")]
    assert [(s["stage_name"], s["status"], s["error_message"]) for s in job["stages"]] == [
        ("PLANNING", "SUCCESS", None), ("PARSING", "FAILED", "cancelled")]
    assert not downstream.calls_for(job_id, "ENRICHING")
    assert job["completed_at"] is not None
