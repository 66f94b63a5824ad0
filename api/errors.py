"""Every error the API returns: ``{"error": {"code", "message"}}`` with the right status,
never HTML, never a stack trace."""

from __future__ import annotations

import logging

import psycopg2
from flask import Flask, Response, jsonify
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from db.engine import DATABASE_UNAVAILABLE
from orchestrator.errors import (
    ConfigError,
    InputMismatch,
    InvalidTransition,
    JobIdInUse,
    JobNotFound,
    JobTerminal,
    NotFailed,
    OrchestratorError,
)
from orchestrator.logs import log_event

log = logging.getLogger(__name__)

#: Domain error → (status, code).
DOMAIN_STATUSES: dict[type[OrchestratorError], tuple[int, str]] = {
    JobNotFound: (404, "job_not_found"),
    JobTerminal: (409, "job_terminal"),
    InputMismatch: (409, "input_mismatch"),
    NotFailed: (409, "job_not_failed"),
    JobIdInUse: (409, "job_id_in_use"),
    InvalidTransition: (409, "invalid_transition"),
    ConfigError: (500, "configuration_error"),
}


class BadRequest(OrchestratorError):
    """The request itself is wrong; the message says how."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[Response, int]:
        return error_response(400, exc.code, exc.message)

    @app.errorhandler(OrchestratorError)
    def domain_error(exc: OrchestratorError) -> tuple[Response, int]:
        for kind, (status, code) in DOMAIN_STATUSES.items():
            if isinstance(exc, kind):
                return error_response(status, code, exc.message)
        return unexpected(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        messages = {413: "request body is larger than 64 KiB",
                    404: "no such route", 405: "method not allowed on this route"}
        response, status = error_response(status, code,
                                          messages.get(status, exc.description or code))
        for name, value in exc.get_headers():  # e.g. the Allow header of a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(SQLAlchemyError)
    @app.errorhandler(psycopg2.Error)  # the start's statement, through psycopg2 itself
    @app.errorhandler(RedisError)
    def unavailable(exc: Exception) -> tuple[Response, int]:
        # Only a lost or refused connection means "unavailable"; any other database error
        # is ours (a 500), never blamed on PostgreSQL.
        if not isinstance(exc, (RedisError, *DATABASE_UNAVAILABLE)):
            return unexpected(exc)
        log_event(log, "api.dependency_unavailable", logging.ERROR, error=repr(exc))
        dependency = "Redis" if isinstance(exc, RedisError) else "PostgreSQL"
        return error_response(503, "dependency_unavailable",
                              f"{dependency} is unavailable; retry later")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log_event(log, "api.error", logging.ERROR, error=repr(exc), exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the API's logs")
