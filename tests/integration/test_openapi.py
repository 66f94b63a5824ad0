"""The OpenAPI document stays true: the same routes and methods as the app, and real
responses validate against its schemas."""

from __future__ import annotations

import re
import uuid

import jsonschema
import pytest

from api.openapi import openapi_document

pytestmark = pytest.mark.integration
DOC = openapi_document()


def documented_operations() -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in DOC["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_route_exists(app_client):
    app = app_client.application
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented_operations()


def validate(response, path: str, method: str = "get") -> None:
    operation = DOC["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented, f"{method.upper()} {path} answered undocumented {response.status_code}"
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema:
        # The component schemas ride along so that "#/components/schemas/…" refs resolve.
        jsonschema.Draft202012Validator({"components": DOC["components"], **schema}
                                        ).validate(response.get_json())


@pytest.fixture(scope="module")
def finished_job(api, worker):
    job_id = uuid.uuid4()
    api.start(job_id)
    api.wait_state(job_id, "COMPLETED")
    return job_id


def test_real_responses_match_the_documented_schemas(api, app_client, finished_job):
    validate(api.get(f"/internal/jobs/{finished_job}"), "/internal/jobs/{job_id}")
    validate(api.get(f"/internal/jobs/{finished_job}/state"), "/internal/jobs/{job_id}/state")
    validate(api.get("/internal/jobs?limit=3"), "/internal/jobs")
    validate(api.get("/internal/jobs?limit=0"), "/internal/jobs")
    validate(api.get(f"/internal/jobs/{uuid.uuid4()}"), "/internal/jobs/{job_id}")
    validate(api.start(finished_job), "/internal/jobs/{job_id}/start", "post")
    fresh = uuid.uuid4()
    validate(api.start(fresh), "/internal/jobs/{job_id}/start", "post")
    validate(api.fail(fresh), "/internal/jobs/{job_id}/fail", "post")
    validate(app_client.get("/healthz"), "/healthz")
    validate(app_client.get("/readyz"), "/readyz")
    validate(app_client.get("/internal/jobs"), "/internal/jobs")


def test_the_document_is_served(api):
    response = api.get("/internal/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.")
    jsonschema.Draft202012Validator.check_schema({"components": DOC["components"]})
