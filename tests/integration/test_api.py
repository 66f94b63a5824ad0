"""Every status code of the internal API's contract, against real PostgreSQL and Redis.

The app runs over a deployment of this module's own that no worker serves (``idle_api``),
so a started job stays in PLANNING, whatever else runs and in whatever order.
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_TOKEN

pytestmark = pytest.mark.integration


@pytest.fixture
def api(idle_api):
    return idle_api


@pytest.fixture
def app_client(idle_api):
    return idle_api.client

JOB_ROUTES = [("post", "/internal/jobs/{id}/start"), ("post", "/internal/jobs/{id}/fail"),
              ("get", "/internal/jobs/{id}/state"), ("get", "/internal/jobs/{id}"),
              ("get", "/internal/jobs"), ("get", "/internal/openapi.json")]


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert response.content_type == "application/json"
    return body["error"]


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_TOKEN}", "Bearer "])
def test_internal_routes_need_a_valid_bearer_token(app_client, method, path, header):
    headers = {"Authorization": header} if header else {}
    response = getattr(app_client, method)(path.format(id=uuid.uuid4()), headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_every_configured_token_is_accepted(app_client):
    for token in (API_TOKEN, "second-token"):
        response = app_client.get("/internal/jobs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


def test_health_routes_need_no_token(app_client):
    assert app_client.get("/healthz").get_json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready",
                                "checks": {"postgresql": "ok", "redis": "ok",
                                           "broker": "ok"}}
    metrics = app_client.get("/metrics")
    assert metrics.status_code == 200
    assert set(jobs_by_state(app_client)) == {"UPLOADED", "PLANNING", "PARSING", "ENRICHING",
                                              "COSTING", "COMPLETED", "FAILED"}


def jobs_by_state(app_client) -> dict[str, float]:
    """The ``orchestrator_jobs`` gauge of a /metrics scrape, by state."""
    text = app_client.get("/metrics").get_data(as_text=True)
    return {sample.labels["state"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "orchestrator_jobs" for sample in family.samples}


def test_the_jobs_gauge_counts_jobs_in_each_state(api, app_client):
    # Given the counts now
    before = jobs_by_state(app_client)
    # When two jobs start and one of them is failed
    first, second = uuid.uuid4(), uuid.uuid4()
    assert api.start(first).status_code == 202 and api.start(second).status_code == 202
    assert api.fail(first).status_code == 200
    # Then the gauge moved by exactly that, and nothing else moved
    after = jobs_by_state(app_client)
    expected = {**before, "PLANNING": before["PLANNING"] + 1, "FAILED": before["FAILED"] + 1}
    assert after == expected


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES[:4])
def test_a_job_id_that_is_not_a_uuid_is_400(api, method, path):
    response = getattr(api.client, method)(path.format(id="not-a-uuid"), headers=api.headers,
                                           json={"error_message": "x"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_job_id"


def test_unknown_job_is_404(api):
    unknown = uuid.uuid4()
    for path in (f"/internal/jobs/{unknown}/state", f"/internal/jobs/{unknown}"):
        assert error_of(api.get(path))["code"] == "job_not_found"
        assert api.get(path).status_code == 404
    assert api.fail(unknown).status_code == 404


def test_unknown_route_and_wrong_method_are_json(api):
    assert error_of(api.get("/nope"))["code"] == "not_found"
    response = api.client.delete(f"/internal/jobs/{uuid.uuid4()}", headers=api.headers)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b'{"input": [1]}',
                                  b'{"input": {}, "extra": 1}', b'{"input": {"a": "x\\u0000"}}',
                                  b'{"input": {"a\\u0000": 1}}', b'{"input": {"a": "\\ud800"}}',
                                  b'\xff\xfe'])
def test_start_with_a_malformed_body_is_400_and_creates_nothing(api, body):
    job_id = uuid.uuid4()
    response = api.client.post(f"/internal/jobs/{job_id}/start", data=body,
                               headers={**api.headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_body"
    assert api.get(f"/internal/jobs/{job_id}/state").status_code == 404


def test_bodies_over_64_kib_are_413(api):
    big = {"input": {"blob": "x" * (64 * 1024)}}
    response = api.client.post(f"/internal/jobs/{uuid.uuid4()}/start", json=big,
                               headers=api.headers)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_entity_too_large"


@pytest.mark.parametrize("body", [{}, {"error_message": ""}, {"error_message": "   "},
                                  {"error_message": 5}, {"error_message": "x" * 4097},
                                  {"error_message": "x", "other": 1}])
def test_fail_needs_a_message_of_at_most_4096_characters(api, body):
    job_id = uuid.uuid4()
    api.start(job_id)
    response = api.client.post(f"/internal/jobs/{job_id}/fail", json=body, headers=api.headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_body"
    # and the refused call changed nothing
    assert api.get(f"/internal/jobs/{job_id}/state").get_json()["current_state"] == "PLANNING"


def test_a_repeated_start_with_another_input_is_409_and_changes_nothing(api):
    job_id = uuid.uuid4()
    assert api.start(job_id, {"sample": "web-stack", "n": 1}).status_code == 202
    before = api.get(f"/internal/jobs/{job_id}/state").get_json()
    # the same input (keys in another order), no body, or a null input: 200
    assert api.start(job_id, {"n": 1, "sample": "web-stack"}).status_code == 200
    assert api.start(job_id).status_code == 200
    assert api.client.post(f"/internal/jobs/{job_id}/start", json={"input": None},
                           headers=api.headers).status_code == 200
    # another input, even an empty one: 409 input_mismatch
    for other in ({"sample": "teardown", "n": 1}, {"sample": "web-stack", "n": 1.5}, {}):
        refused = api.start(job_id, other)
        assert refused.status_code == 409, other
        error = error_of(refused)
        assert error["code"] == "input_mismatch" and "different input" in error["message"]
    assert api.get(f"/internal/jobs/{job_id}/state").get_json() == before


def test_start_is_202_then_200_then_409_once_terminal(api):
    job_id = uuid.uuid4()
    first = api.start(job_id)
    assert first.status_code == 202
    state = first.get_json()
    assert state["current_state"] == "PLANNING" and state["previous_state"] == "UPLOADED"
    again = api.start(job_id)
    assert again.status_code == 200
    assert again.get_json()["job_id"] == str(job_id)
    failed = api.fail(job_id, "stop it")
    assert failed.status_code == 200
    assert failed.get_json()["current_state"] == "FAILED"
    assert failed.get_json()["error_message"] == "stop it"
    late = api.start(job_id)
    assert late.status_code == 409
    assert error_of(late)["code"] == "job_terminal"
    assert api.fail(job_id).status_code == 409


def test_state_has_exactly_the_contract_fields(api):
    job_id = uuid.uuid4()
    api.start(job_id)
    state = api.get(f"/internal/jobs/{job_id}/state").get_json()
    assert set(state) == {"job_id", "current_state", "previous_state", "retry_count",
                          "error_message", "created_at", "updated_at", "started_at",
                          "completed_at", "plan_reference", "result_reference"}
    assert state["created_at"].endswith("Z") and state["started_at"].endswith("Z")


def test_correlation_id_is_kept_or_made(api):
    response = api.get("/internal/jobs")
    assert len(response.headers["X-Correlation-ID"]) == 36
    kept = api.client.get("/internal/jobs", headers={**api.headers,
                                                     "X-Correlation-ID": "req-42"})
    assert kept.headers["X-Correlation-ID"] == "req-42"


def test_list_pages_newest_first_with_a_cursor_and_a_state_filter(api):
    ids = [uuid.uuid4() for _ in range(5)]
    for job_id in ids:
        api.start(job_id)
        api.fail(job_id, "listed")
    seen, cursor = [], None
    while True:
        query = "state=FAILED&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/internal/jobs?{query}").get_json()
        assert len(page["jobs"]) <= 2
        assert all(j["current_state"] == "FAILED" for j in page["jobs"])
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    mine = [s for s in seen if uuid.UUID(s) in ids]
    assert mine == [str(i) for i in reversed(ids)]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("query", ["state=DONE", "limit=0", "limit=201", "limit=x",
                                   "cursor=garbage!"])
def test_list_rejects_bad_parameters(api, query):
    response = api.get(f"/internal/jobs?{query}")
    assert response.status_code == 400
    error_of(response)


def test_the_api_refuses_to_start_without_tokens(idle_settings):
    from dataclasses import replace

    from api.app import create_app
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        create_app(replace(idle_settings, api_tokens=()), enqueuer=lambda *a: None)
    assert raised.value.variable == "ORCHESTRATOR_API_TOKENS"
    open_app = create_app(replace(idle_settings, api_tokens=(), auth_disabled=True),
                          enqueuer=lambda *a: None)
    assert open_app.test_client().get("/internal/jobs").status_code == 200


def test_an_unexpected_error_is_a_json_500_without_details(api, monkeypatch):
    import api.app as app_module

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/app.py line 12")

    monkeypatch.setattr(app_module, "start_job", broken)
    response = api.start(uuid.uuid4())
    assert response.status_code == 500
    assert error_of(response) == {"code": "internal_error",
                                  "message": "internal error; see the API's logs"}
    assert b"secret" not in response.data and b"Traceback" not in response.data
