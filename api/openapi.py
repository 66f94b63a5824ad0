"""The OpenAPI 3 document of the API. ``tests/integration/test_openapi.py`` keeps it true:
every route is documented and every documented route exists, with the same methods, and
real responses validate against the schemas below."""

from __future__ import annotations

from typing import Any

from orchestrator.states import State

_STATES = [s.value for s in State]
_STAGES = ["PLANNING", "PARSING", "ENRICHING", "COSTING"]
_TS = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "Malformed job id, body or query", 401: "Missing or wrong bearer token",
            404: "Unknown job",
            409: "The job is already terminal (job_terminal); for a start, also an input other "
                 "than the job's stored one (input_mismatch)",
            413: "Body over 64 KiB", 503: "A dependency is down"}
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "format": "uuid"}}
_CORRELATION = {"name": "X-Correlation-ID", "in": "header", "required": False,
                "schema": {"type": "string", "maxLength": 128},
                "description": "Kept (or made) and carried into every log line, task and "
                               "downstream call of the job."}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "JobState": {
        "type": "object", "additionalProperties": False,
        "required": ["job_id", "current_state", "previous_state", "retry_count",
                     "error_message", "created_at", "updated_at", "started_at",
                     "completed_at", "plan_reference", "result_reference"],
        "properties": {
            "job_id": {"type": "string", "format": "uuid"},
            "current_state": {"type": "string", "enum": _STATES},
            "previous_state": {"type": ["string", "null"], "enum": [*_STATES, None]},
            "retry_count": {"type": "integer", "minimum": 0},
            "error_message": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": _TS, "completed_at": _TS,
            "plan_reference": {"type": ["string", "null"]},
            "result_reference": {"type": ["string", "null"]}}},
    "Transition": {
        "type": "object", "additionalProperties": False,
        "required": ["from_state", "to_state", "at", "reason"],
        "properties": {"from_state": {"type": "string", "enum": _STATES},
                       "to_state": {"type": "string", "enum": _STATES},
                       "at": {"type": "string", "format": "date-time"},
                       "reason": {"type": ["string", "null"]}}},
    "StageAttempt": {
        "type": "object", "additionalProperties": False,
        "required": ["stage_name", "attempt_number", "status", "started_at", "completed_at",
                     "duration_ms", "error_message", "reused_from"],
        "properties": {
            "stage_name": {"type": "string",
                           "enum": ["PLANNING", "PARSING", "ENRICHING", "COSTING"]},
            "attempt_number": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["RUNNING", "SUCCESS", "FAILED"]},
            "started_at": {"type": "string", "format": "date-time"},
            "completed_at": _TS,
            "duration_ms": {"type": ["integer", "null"]},
            "error_message": {"type": ["string", "null"]},
            "reused_from": {"type": ["string", "null"], "format": "uuid",
                            "description": "A redrive's SUCCESS that reused this job's "
                                           "stored output instead of calling the service"}}},
    "Notification": {
        "type": ["object", "null"], "additionalProperties": False,
        "description": "The announcement of the job's end to NOTIFY_URL (null before "
                       "it ends): pending until a 2xx, delivered, or skipped when no "
                       "NOTIFY_URL was configured",
        "required": ["event_id", "status", "attempts", "last_error", "delivered_at",
                     "next_attempt_at"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["pending", "delivered", "skipped"]},
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": {"type": ["string", "null"]},
            "delivered_at": _TS,
            "next_attempt_at": {**_TS, "description": "When a pending one is tried next"}}},
    "JobList": {
        "type": "object", "required": ["jobs", "next_cursor"], "additionalProperties": False,
        "properties": {"jobs": {"type": "array", "items": _ref("JobState")},
                       "next_cursor": {"type": ["string", "null"]}}},
    "StartRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"input": {"type": "object",
                                 "description": "PLANNING's input, passed whole"}}},
    "RedriveRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"job_id": {"type": "string", "format": "uuid",
                                  "description": "The new job's id (a repeated call with "
                                                 "it is idempotent); a fresh one if absent"}}},
    "Redrive": {
        "type": "object", "additionalProperties": False,
        "required": ["job_id", "redriven_from", "resumes_at"],
        "properties": {
            "job_id": {"type": "string", "format": "uuid"},
            "redriven_from": {"type": "string", "format": "uuid"},
            "resumes_at": {"type": "string", "enum": [*_STAGES, "COMPLETED"],
                           "description": "The first stage whose service the new job "
                                          "calls; the ones before reuse the old outputs"}}},
    "FailRequest": {
        "type": "object", "required": ["error_message"], "additionalProperties": False,
        "properties": {"error_message": {"type": "string", "minLength": 1,
                                         "maxLength": 4096}}},
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"}}},
    "Ready": {"type": "object", "required": ["status", "checks"],
              "properties": {"status": {"type": "string", "enum": ["ready", "not_ready"]},
                             "checks": {"type": "object",
                                        "description": "postgresql, redis, broker: ok or "
                                                       "error: <kind>",
                                        "additionalProperties": {"type": "string"}},
                             "down": {"type": "array", "items": {"type": "string"},
                                      "description": "The checks that failed (503 only)"}}},
}

# The detail is the state plus history; spelled out (not allOf) so that both can keep
# additionalProperties false.
SCHEMAS["JobDetail"] = {
    "type": "object", "additionalProperties": False,
    "required": [*SCHEMAS["JobState"]["required"], "transitions", "stages", "result",
                 "notification", "redriven_from", "redrives"],
    "properties": {
        **SCHEMAS["JobState"]["properties"],
        "transitions": {"type": "array", "items": _ref("Transition")},
        "stages": {"type": "array", "items": _ref("StageAttempt")},
        "result": {"type": ["object", "null"],
                   "description": "COSTING's output once COMPLETED, else null"},
        "notification": _ref("Notification"),
        "redriven_from": {"type": ["string", "null"], "format": "uuid",
                          "description": "The FAILED job this one redrives"},
        "redrives": {"type": "array", "items": {"type": "string", "format": "uuid"},
                     "description": "The redrives of this job, oldest first"}}}


def openapi_document() -> dict[str, Any]:
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Job Orchestrator internal API", "version": "1"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/internal/jobs/{job_id}/start": {"post": {
                "summary": "Create the job if new and start its pipeline (idempotent)",
                "security": auth, "parameters": [_JOB_ID, _CORRELATION],
                "requestBody": {"required": False, "content": {
                    "application/json": {"schema": _ref("StartRequest")}}},
                "responses": {"202": _json(_ref("JobState"), "Started now"),
                              "200": _json(_ref("JobState"), "Already running; no new chain"),
                              **_errors(400, 401, 409, 413)}}},
            "/internal/jobs/{job_id}/fail": {"post": {
                "summary": "Fail a non-terminal job now; a stage in flight cannot undo it",
                "security": auth, "parameters": [_JOB_ID, _CORRELATION],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("FailRequest")}}},
                "responses": {"200": _json(_ref("JobState"), "Failed"),
                              **_errors(400, 401, 404, 409, 413)}}},
            "/internal/jobs/{job_id}/redrive": {"post": {
                "summary": "Run a FAILED job again as a new job, reusing the outputs of the "
                           "stages that succeeded",
                "security": auth, "parameters": [_JOB_ID, _CORRELATION],
                "requestBody": {"required": False, "content": {
                    "application/json": {"schema": _ref("RedriveRequest")}}},
                "responses": {"202": _json(_ref("Redrive"), "The new job, started"),
                              "200": _json(_ref("Redrive"), "Already redriven with that id"),
                              **_errors(400, 401, 404, 409, 413)}}},
            "/internal/jobs/{job_id}/state": {"get": {
                "summary": "The job's state", "security": auth, "parameters": [_JOB_ID],
                "responses": {"200": _json(_ref("JobState"), "The job's state"),
                              **_errors(400, 401, 404)}}},
            "/internal/jobs/{job_id}": {"get": {
                "summary": "The job with its transitions, stage attempts and result",
                "security": auth, "parameters": [_JOB_ID],
                "responses": {"200": _json(_ref("JobDetail"), "The job in full"),
                              **_errors(400, 401, 404)}}},
            "/internal/jobs": {"get": {
                "summary": "Jobs, newest first, a page at a time", "security": auth,
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string",
                                                                "enum": _STATES}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 200,
                                "default": 50}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("JobList"), "A page of jobs"),
                              **_errors(400, 401)}}},
            "/internal/openapi.json": {"get": {
                "summary": "This document", "security": auth,
                "responses": {"200": {"description": "OpenAPI 3 document"},
                              **_errors(401)}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": _json(_ref("Health"), "The process answers")}}},
            "/readyz": {"get": {"summary": "Readiness: PostgreSQL, Redis and the broker answer",
                                "responses": {"200": _json(_ref("Ready"), "Ready"),
                                              "503": _json(_ref("Ready"), "Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
