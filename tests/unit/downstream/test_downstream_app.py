"""The HTTP layer: envelope, auth, limits, JSON errors, fault injection, the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from downstream import DownstreamConfig, create_app
from downstream.faults import apply_faults
from downstream.samples import load_sample, sample_path

TOKEN = "s3cret-token"
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    config = DownstreamConfig(token=TOKEN, data_dir=str(tmp_path), max_body_bytes=256 * 1024)
    return create_app(config).test_client()


def call(client: FlaskClient, stage: str, stage_input: dict[str, Any], attempt: int = 1,
         token: str | None = TOKEN, headers: dict[str, str] | None = None) -> Any:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"job_id": "job-1", "stage": stage, "attempt": attempt, "input": stage_input}
    return client.post(f"/{stage.lower()}", json=body, headers=headers)


def run_pipeline(client: FlaskClient, first_input: dict[str, Any]) -> list[dict[str, Any]]:
    outputs, stage_input = [], first_input
    for stage in STAGES:
        response = call(client, stage, stage_input, headers={"Idempotency-Key": f"job-1:{stage}"})
        assert response.status_code == 200, response.get_json()
        stage_input = response.get_json()
        outputs.append(stage_input)
    return outputs


def assert_error(response: Any, status: int, code: str, message: str | None = None) -> None:
    assert response.status_code == status
    assert response.is_json
    error = response.get_json()["error"]
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message


def test_whole_pipeline_on_a_sample(client: FlaskClient) -> None:
    planning, parsing, enriching, costing = run_pipeline(
        client, {"plan": load_sample("resize-instance")})

    assert planning["plan_reference"].startswith("plan-")
    assert planning["resource_change_count"] == 4 and planning["format_version"] == "1.2"
    assert parsing["plan_reference"] == planning["plan_reference"]
    assert len(parsing["resources"]) == 4
    assert all("pricing" in r for r in enriching["resources"])
    assert costing["monthly_cost_delta"] == 66.08
    assert costing["result_reference"].startswith("result-")


def test_planning_from_a_path_is_idempotent_and_matches_the_inline_plan(
    client: FlaskClient,
) -> None:
    by_path = call(client, "PLANNING", {"plan_path": str(sample_path("teardown"))}).get_json()
    inline = call(client, "PLANNING", {"plan": load_sample("teardown")}, attempt=2).get_json()
    named = call(client, "PLANNING", {"sample": "teardown"}, attempt=3).get_json()
    assert by_path["plan_reference"] == inline["plan_reference"] == named["plan_reference"]


def test_planning_reads_utf16_files(client: FlaskClient, tmp_path: Path) -> None:
    path = tmp_path / "plan-utf16.json"
    path.write_bytes(sample_path("web-stack").read_text().encode("utf-16"))
    response = call(client, "PLANNING", {"plan_path": str(path)})
    assert response.status_code == 200 and response.get_json()["resource_change_count"] == 14


def test_malformed_plan_passes_planning_and_fails_parsing(client: FlaskClient) -> None:
    planning = call(client, "PLANNING", {"plan": load_sample("malformed")}).get_json()
    response = call(client, "PARSING", planning)
    assert_error(response, 422, "malformed_plan",
                 "resource_changes[1].change.actions is missing (resource aws_instance.broken)")


@pytest.mark.parametrize("stage_input, status, message", [
    ({}, 400, "PLANNING needs exactly one of input.plan (the `terraform show -json` document), "
              "input.plan_path (a file this service can read) and input.sample (a bundled "
              "sample's name)"),
    ({"plan": {}, "sample": "teardown"}, 400, "PLANNING needs exactly one of input.plan (the "
     "`terraform show -json` document), input.plan_path (a file this service can read) and "
     "input.sample (a bundled sample's name); got plan, sample"),
    ({"sample": "nope"}, 400, "input.sample: unknown sample plan 'nope'; known: web-stack, "
                              "resize-instance, teardown, malformed"),
    ({"plan_path": "/nonexistent/plan.json"}, 400,
     "input.plan_path '/nonexistent/plan.json' cannot be read: No such file or directory"),
    ({"plan": [1]}, 422, "input.plan is not a Terraform plan: it is a list, not a JSON object"),
    ({"plan": "{not json"}, 422, None),
])
def test_planning_input_errors(client: FlaskClient, stage_input: dict[str, Any], status: int,
                               message: str | None) -> None:
    response = call(client, "PLANNING", stage_input)
    assert response.status_code == status
    assert response.get_json()["error"]["message"] == message or message is None


def test_unknown_and_invalid_plan_references(client: FlaskClient) -> None:
    unknown = call(client, "PARSING", {"plan_reference": "plan-" + "0" * 32})
    assert_error(unknown, 404, "not_found")
    assert "is not stored by this service" in unknown.get_json()["error"]["message"]
    traversal = call(client, "PARSING", {"plan_reference": "../../etc/passwd"})
    assert_error(traversal, 422, "invalid_input")


def test_later_stages_reject_the_wrong_input(client: FlaskClient) -> None:
    assert_error(call(client, "ENRICHING", {}), 422, "invalid_input",
                 "input.resources is missing or not a list: ENRICHING expects PARSING's output")
    assert_error(call(client, "COSTING", {"resources": [{"address": "a"}]}), 422,
                 "invalid_input", "input.resources[0] has no 'pricing' object: COSTING expects "
                 "ENRICHING's output")


@pytest.mark.parametrize("token, message", [
    (None, "missing bearer token: send 'Authorization: Bearer <token>'"),
    ("wrong", "invalid bearer token"),
])
def test_auth(client: FlaskClient, token: str | None, message: str) -> None:
    assert_error(call(client, "PLANNING", {}, token=token), 401, "unauthorized", message)


def test_no_token_configured_means_no_auth(tmp_path: Path) -> None:
    open_client = create_app(DownstreamConfig(data_dir=str(tmp_path))).test_client()
    response = call(open_client, "PLANNING", {"plan": load_sample("web-stack")}, token=None)
    assert response.status_code == 200


def test_body_too_large_is_413_json(client: FlaskClient) -> None:
    response = client.post("/planning", data=b"x" * (256 * 1024 + 1),
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert_error(response, 413, "request_entity_too_large",
                 "request body is over the 262144-byte limit")


@pytest.mark.parametrize("body, message", [
    (b"[]", None),
    (b"{", None),
    (json.dumps({"job_id": "", "stage": "PLANNING", "attempt": 1}).encode(), None),
    (json.dumps({"job_id": "j", "stage": "PARSING", "attempt": 1}).encode(),
     "stage 'PARSING' was sent to /planning, which serves PLANNING"),
    (json.dumps({"job_id": "j", "stage": "PLANNING", "attempt": 0}).encode(),
     "attempt must be an integer >= 1, got 0"),
    (json.dumps({"job_id": "j", "stage": "PLANNING", "attempt": True}).encode(), None),
    (json.dumps({"job_id": "j", "stage": "PLANNING", "attempt": 1, "input": []}).encode(),
     "input must be a JSON object"),
])
def test_envelope_errors_are_400_json(client: FlaskClient, body: bytes,
                                      message: str | None) -> None:
    response = client.post("/planning", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert_error(response, 400, "bad_request", message)


def test_idempotency_key_must_match(client: FlaskClient) -> None:
    response = call(client, "PLANNING", {}, headers={"Idempotency-Key": "job-2:PLANNING"})
    assert_error(response, 400, "bad_request")


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/planning"), 405, "method_not_allowed")


def test_healthz_and_correlation_id(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Correlation-ID": "corr-42"})
    assert response.get_json() == {"status": "ok", "catalog": "aws_us_east_1"}
    assert response.headers["X-Correlation-ID"] == "corr-42"


def test_faults_fail_the_first_attempts_then_succeed(client: FlaskClient) -> None:
    # Given a job whose PARSING fails twice with a 503 and Retry-After
    faults = {"PARSING": {"fail_times": 2, "status": 503, "retry_after": 7}}
    planning = call(client, "PLANNING", {"plan": load_sample("web-stack"),
                                         "faults": faults}).get_json()
    assert planning["faults"] == faults
    # When PARSING is attempted three times
    first, second, third = (call(client, "PARSING", planning, attempt=n) for n in (1, 2, 3))
    # Then attempts 1 and 2 fail as asked and attempt 3 succeeds, carrying the faults along
    for failed in (first, second):
        assert_error(failed, 503, "injected_fault")
        assert failed.headers["Retry-After"] == "7"
    assert third.status_code == 200 and third.get_json()["faults"] == faults


def test_fault_with_raw_body_and_custom_status(client: FlaskClient) -> None:
    faults = {"PLANNING": {"fail_times": 1, "status": 502, "body": "<html>bad gateway</html>"}}
    response = call(client, "PLANNING", {"plan": {}, "faults": faults})
    assert response.status_code == 502
    assert response.data == b"<html>bad gateway</html>" and "Retry-After" not in response.headers


def test_fault_message_and_permanent_status(client: FlaskClient) -> None:
    faults = {"COSTING": {"fail_times": 5, "status": 422, "message": "boom"}}
    assert_error(call(client, "COSTING", {"resources": [], "faults": faults}), 422,
                 "injected_fault", "boom")


def test_fault_delay_uses_the_attempt() -> None:
    slept: list[float] = []
    faults = {"faults": {"ENRICHING": {"delay_s": 1.5, "delay_times": 1}}}
    apply_faults("ENRICHING", 1, faults, sleep=slept.append)
    apply_faults("ENRICHING", 2, faults, sleep=slept.append)
    apply_faults("PARSING", 1, faults, sleep=slept.append)
    assert slept == [1.5]


@pytest.mark.parametrize("faults, message", [
    ({"NOPE": {}}, "input.faults: unknown stage 'NOPE'; expected one of "
                   "('PLANNING', 'PARSING', 'ENRICHING', 'COSTING')"),
    ({"PLANNING": {"fail_times": -1}}, "input.faults.PLANNING.fail_times must be >= 0, got -1"),
    ({"PLANNING": {"status": 99}},
     "input.faults.PLANNING.status must be between 200 and 599, got 99"),
    ({"PLANNING": {"delay_s": "1"}},
     "input.faults.PLANNING.delay_s must be a number of seconds, got '1'"),
    ({"PLANNING": {"typo": 1}}, "input.faults.PLANNING: unknown key(s) ['typo']"),
])
def test_bad_faults_are_400(client: FlaskClient, faults: dict[str, Any], message: str) -> None:
    assert_error(call(client, "PLANNING", {"plan": {}, "faults": faults}), 400, "bad_request",
                 message)


def test_config_from_env(tmp_path: Path) -> None:
    config = DownstreamConfig.from_env({"DOWNSTREAM_TOKEN": "t", "DOWNSTREAM_DATA_DIR":
                                        str(tmp_path)})
    assert (config.token, config.data_dir) == ("t", str(tmp_path))
    assert DownstreamConfig.from_env({}).token is None
    with pytest.raises(ValueError, match="DOWNSTREAM_TOKEN"):
        DownstreamConfig.from_env({"DOWNSTREAM_TOKEN": "has space"})
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ValueError, match="DOWNSTREAM_DATA_DIR"):
        DownstreamConfig.from_env({"DOWNSTREAM_DATA_DIR": str(afile)})


def test_a_bug_is_a_500_json_without_a_traceback(tmp_path: Path) -> None:
    app = create_app(DownstreamConfig(data_dir=str(tmp_path)))
    app.extensions["downstream_services"] = None  # break the stages on purpose
    response = call(app.test_client(), "PARSING", {}, token=None)
    assert_error(response, 500, "internal_error", "internal error: AttributeError")
    assert b"Traceback" not in response.data
