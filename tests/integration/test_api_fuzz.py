"""Property-based: schemathesis generates requests from the OpenAPI document (valid and
invalid ones) and sends them to the real app over real PostgreSQL and Redis. Whatever comes
in, the API answers with a documented status and a body matching its schema, and never a
server error: bad input always gets a clear 4xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import openapi_document
from tests.conftest import API_TOKEN

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
OPERATIONS = [(path, method) for path, item in openapi_document()["paths"].items()
              for method in item]


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}"
                                                              for p, m in OPERATIONS])
def test_every_generated_request_gets_a_documented_answer(idle_api, path, method):
    # The app of a deployment no worker serves: the jobs it starts stay where it put them,
    # in a database of this module's own.
    app_client = idle_api.client
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    schema = schemathesis.openapi.from_wsgi("/internal/openapi.json", app_client.application,
                                            headers=headers)
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def answers_as_documented(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    answers_as_documented()
