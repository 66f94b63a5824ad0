"""The Flask app serving the four reference downstream services.

``POST /planning``, ``/parsing``, ``/enriching``, ``/costing`` take the contract's
envelope ``{"job_id", "stage", "attempt", "input"}`` and answer the stage's output
object; ``GET /healthz`` answers liveness. Every answer is JSON and every error is
``{"error": {"code", "message"}}`` (except an injected fault's deliberate ``body``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from downstream.config import DownstreamConfig
from downstream.errors import BadRequest, DownstreamError, InjectedFault, Unauthorized
from downstream.faults import apply_faults
from downstream.price_catalog import load_catalog
from downstream.stages import STAGE_HANDLERS, Services
from downstream.store import PlanStore

logger = logging.getLogger(__name__)

ROUTES = {"planning": "PLANNING", "parsing": "PARSING", "enriching": "ENRICHING",
          "costing": "COSTING"}
MAX_JOB_ID_CHARS = 200


def create_app(config: DownstreamConfig | None = None) -> Flask:
    """Build the app; with no ``config`` it is read from the environment."""
    config = config if config is not None else DownstreamConfig.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["downstream_config"] = config
    app.extensions["downstream_services"] = Services(
        store=PlanStore(config.data_dir),
        catalog=load_catalog(),
        max_plan_bytes=max(config.max_body_bytes, 64 * 1024 * 1024),
    )
    for path, stage in ROUTES.items():
        app.add_url_rule(f"/{path}", endpoint=path, view_func=_stage_view(stage),
                         methods=["POST"])
    app.add_url_rule("/healthz", endpoint="healthz", view_func=_healthz, methods=["GET"])
    app.before_request(_remember_correlation_id)
    app.after_request(_echo_correlation_id)
    app.register_error_handler(DownstreamError, _downstream_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _stage_view(stage: str) -> Any:
    """The view function for one stage's route."""

    def view() -> tuple[Response, int]:
        return _run_stage(stage)

    view.__name__ = f"{stage.lower()}_view"
    return view


def _run_stage(stage: str) -> tuple[Response, int]:
    """Authenticate, validate the envelope, inject faults, run the stage."""
    _check_token(current_app.extensions["downstream_config"].token)
    job_id, attempt, stage_input = _envelope(stage)
    g.log_fields = {"job_id": job_id, "stage": stage, "attempt": attempt}
    started = time.monotonic()
    _log("downstream_stage_started")
    apply_faults(stage, attempt, stage_input)
    output = STAGE_HANDLERS[stage](stage_input, current_app.extensions["downstream_services"])
    _log("downstream_stage_succeeded", duration_ms=_ms_since(started))
    return jsonify(output), 200


def _healthz() -> tuple[Response, int]:
    services = current_app.extensions["downstream_services"]
    return jsonify({"status": "ok", "catalog": services.catalog.name}), 200


def _check_token(expected: str | None) -> None:
    """Constant-time bearer-token check; no token configured means no check."""
    if expected is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(supplied.strip().encode(), expected.encode()):
        raise Unauthorized("invalid bearer token")


def _envelope(stage: str) -> tuple[str, int, dict[str, Any]]:
    """``(job_id, attempt, input)`` from the request body, checked against the route."""
    body = _json_body()
    if not isinstance(body, dict):
        raise BadRequest('request body must be a JSON object {"job_id", "stage", "attempt", '
                         '"input"}')
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_CHARS:
        raise BadRequest(f"job_id must be a non-empty string of at most {MAX_JOB_ID_CHARS} "
                         "characters")
    if body.get("stage") != stage:
        raise BadRequest(f"stage {body.get('stage')!r} was sent to /{stage.lower()}, "
                         f"which serves {stage}")
    attempt = body.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise BadRequest(f"attempt must be an integer >= 1, got {attempt!r}")
    stage_input = body.get("input", {})
    if not isinstance(stage_input, dict):
        raise BadRequest("input must be a JSON object")
    _check_idempotency_key(job_id, stage)
    return job_id, attempt, stage_input


def _json_body() -> Any:
    """The request body parsed as JSON (no NaN/Infinity), or a 400 saying why not."""
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_idempotency_key(job_id: str, stage: str) -> None:
    """When sent, ``Idempotency-Key`` must be ``<job_id>:<stage>``."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and key != f"{job_id}:{stage}":
        raise BadRequest(f"Idempotency-Key {key!r} does not match '<job_id>:<stage>' "
                         f"({job_id}:{stage})")


def _remember_correlation_id() -> None:
    supplied = request.headers.get("X-Correlation-ID", "")
    g.correlation_id = supplied[:200] if supplied else uuid.uuid4().hex


def _echo_correlation_id(response: Response) -> Response:
    response.headers["X-Correlation-ID"] = g.get("correlation_id", "")
    return response


def _downstream_error(error: DownstreamError) -> Response:
    """A DownstreamError as its JSON error (or an injected fault's raw body)."""
    level = logging.ERROR if error.status >= 500 else logging.WARNING
    _log("downstream_stage_failed", level, status=error.status, error=error.message)
    if isinstance(error, InjectedFault) and error.raw_body is not None:
        response = Response(error.raw_body, status=error.status,
                            mimetype=_mimetype_of(error.raw_body))
    else:
        response = jsonify(error.to_json())
        response.status_code = error.status
    if isinstance(error, InjectedFault) and error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _http_error(error: HTTPException) -> Response:
    """Werkzeug's HTTP errors (404, 405, 413, ...) as JSON instead of HTML."""
    status = error.code or 500
    message = error.description or error.name
    if status == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"request body is over the {limit}-byte limit"
    code = error.name.lower().replace(" ", "_")
    _log("downstream_http_error", logging.WARNING, status=status, error=message)
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _unexpected_error(error: Exception) -> Response:
    """A bug: log the traceback, answer a 500 JSON error without it."""
    logger.exception("downstream_unexpected_error",
                     extra={"event": "downstream_unexpected_error", **_fields()})
    response = jsonify({"error": {"code": "internal_error",
                                  "message": f"internal error: {type(error).__name__}"}})
    response.status_code = 500
    return response


def _mimetype_of(body: str) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "text/plain"
    return "application/json"


def _log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"event": event, **_fields(), **fields})


def _fields() -> dict[str, Any]:
    """Log fields of the current request: event context, never the token or the plan."""
    return {"correlation_id": g.get("correlation_id"), **g.get("log_fields", {})}


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
