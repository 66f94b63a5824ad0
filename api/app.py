"""``create_app(settings)``: the internal API as a Flask app (served by gunicorn)."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import redis
from flask import Flask, Response, g, jsonify, request
from sqlalchemy import Engine

from api import requests as parse
from api.errors import error_response, register_error_handlers
from api.metrics import Metrics
from api.openapi import openapi_document
from api.serialize import job_detail, job_state
from db.engine import make_engine
from db.repository import JobRepository
from db.uow import PostgresUnitOfWork
from orchestrator.errors import JobNotFound
from orchestrator.logs import job_context, log_event
from orchestrator.ports import Canceller, Enqueuer
from orchestrator.service import fail_job, redrive_job, start_job
from orchestrator.settings import Settings

MAX_BODY = 64 * 1024
log = logging.getLogger(__name__)


#: PostgreSQL connections of one API process: its request threads (gunicorn's, see
#: cli.serve.THREADS) and 2 to spare.
API_CONNECTIONS = 10


def api_engine(settings: Settings) -> Engine:
    """The API process's pool: a connection per request thread, each kept once opened
    rather than opened per request above a smaller pool (a new PostgreSQL session is a
    fork and an authentication)."""
    return make_engine(settings.database_url or "", pool_size=API_CONNECTIONS,
                       max_connections=API_CONNECTIONS)


def create_app(settings: Settings, *, enqueuer: Enqueuer | None = None,
               engine: Engine | None = None) -> Flask:
    """The API over the PostgreSQL and Redis of ``settings``; refuses to build with no
    token unless auth is explicitly disabled. ``enqueuer`` is given by whoever composes
    the process (``orchestrator api``); without one (tests), the light Celery sender of
    ``tasks.chain``, never a worker's app. Its ``cancel``, if any, is the canceller."""
    settings.require_services()
    settings.require_api_tokens()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    engine = engine or api_engine(settings)
    uow = PostgresUnitOfWork(engine)
    redis_client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=3,
                                        socket_connect_timeout=3)
    if enqueuer is None:
        from tasks.chain import make_enqueuer

        enqueuer = make_enqueuer(settings)
    metrics = Metrics(uow, redis_client, settings.metrics_key_prefix)
    broker_app = getattr(enqueuer, "app", None)
    if broker_app is None:
        from tasks.chain import create_sender_app

        broker_app = create_sender_app(settings)
    register_error_handlers(app)
    # Observability first: a before_request hook that answers (auth's 401) skips the hooks
    # registered after it, and every request, rejected ones included, needs its
    # correlation id and timer before anything can answer it.
    _register_observability(app, metrics)
    _register_auth(app, settings)
    _register_jobs(app, uow, enqueuer, getattr(enqueuer, "cancel", None),
                   settings.outbox_enqueue_after)
    _register_health(app, uow, redis_client, metrics, broker_app)
    return app


def _register_auth(app: Flask, settings: Settings) -> None:
    tokens = [t.encode() for t in settings.api_tokens]

    @app.before_request
    def authenticate() -> Any:
        if not request.path.startswith("/internal") or settings.auth_disabled:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # Compare against every token, in constant time, without stopping at a match.
        matches = [hmac.compare_digest(given.strip().encode(), t) for t in tokens]
        if scheme.lower() != "bearer" or not any(matches):
            response, status = error_response(401, "unauthorized",
                                              "a valid 'Authorization: Bearer <token>' is "
                                              "required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, status
        return None


def _register_observability(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def begin() -> None:
        g.started = time.monotonic()
        g.correlation_id = parse.correlation_id(request)

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["X-Correlation-ID"] = g.get("correlation_id", "")
        seconds = time.monotonic() - g.get("started", time.monotonic())
        route = request.url_rule.rule if request.url_rule else "other"
        metrics.observe(request.method, route, response.status_code, seconds)
        if not route.startswith(("/healthz", "/readyz", "/metrics")):
            job = (request.view_args or {}).get("job_id")
            with job_context(job, g.get("correlation_id")):
                log_event(log, "api.request", method=request.method, path=request.path,
                          status=response.status_code, duration_ms=int(seconds * 1000))
        return response


def _register_jobs(app: Flask, uow: PostgresUnitOfWork, enqueue: Enqueuer,
                   cancel: Canceller | None, outbox_after: float) -> None:
    def read(job_id: str, load: Callable[[JobRepository, UUID], Any]) -> Any:
        with uow() as jobs:
            found = load(jobs, parse.job_id(job_id))
        if found is None:
            raise JobNotFound(job_id)
        return found

    @app.post("/internal/jobs/<job_id>/start")
    def start(job_id: str) -> Any:
        ident = parse.job_id(job_id)
        job_input = parse.start_input(request)
        with job_context(ident, g.correlation_id):
            result = start_job(uow, enqueue, ident, job_input, g.correlation_id,
                               outbox_after=outbox_after)
        return jsonify(job_state(result.job)), 202 if result.started else 200

    @app.post("/internal/jobs/<job_id>/fail")
    def fail(job_id: str) -> Any:
        ident = parse.job_id(job_id)
        message = parse.fail_message(request)
        with job_context(ident, g.correlation_id):
            return jsonify(job_state(fail_job(uow, ident, message, cancel=cancel,
                                              reason="failed by operator via the API")))

    @app.post("/internal/jobs/<job_id>/redrive")
    def redrive(job_id: str) -> Any:
        ident = parse.job_id(job_id)
        new_id = parse.redrive_id(request)
        with job_context(new_id, g.correlation_id):
            result = redrive_job(uow, enqueue, ident, new_id, outbox_after=outbox_after)
        return jsonify({"job_id": str(result.job.job_id), "redriven_from": str(ident),
                        "resumes_at": result.resumes_at.value}), 202 if result.started else 200

    @app.get("/internal/jobs/<job_id>/state")
    def state(job_id: str) -> Any:
        # One row, not the job's whole history: this is the endpoint callers poll.
        return jsonify(job_state(read(job_id, JobRepository.get)))

    @app.get("/internal/jobs/<job_id>")
    def detail(job_id: str) -> Any:
        return jsonify(job_detail(read(job_id, JobRepository.detail)))

    @app.get("/internal/jobs")
    def list_jobs() -> Any:
        state = parse.state_filter(request.args.get("state"))
        limit = parse.limit(request.args.get("limit"))
        after = parse.decode_cursor(request.args.get("cursor"))
        with uow() as jobs:
            page = jobs.list_jobs(state, limit + 1, after)
        more = len(page) > limit
        page = page[:limit]
        cursor = parse.encode_cursor(page[-1].created_at, page[-1].job_id) if more else None
        return jsonify({"jobs": [job_state(j) for j in page], "next_cursor": cursor})

    @app.get("/internal/openapi.json")
    def openapi() -> Any:
        return jsonify(openapi_document())


def _register_health(app: Flask, uow: PostgresUnitOfWork, redis_client: redis.Redis,
                     metrics: Metrics, broker_app: Any) -> None:
    from tasks.chain import check_broker

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        # The broker too (CELERY_BROKER_URL, or REDIS_URL's server): a 202 needs it to
        # keep its promise at once, not only once the outbox relay gets through.
        checks = {"postgresql": _check(lambda: _ping_db(uow)),
                  "redis": _check(redis_client.ping),
                  "broker": _check(lambda: check_broker(broker_app, timeout=2.0))}
        ready = all(v == "ok" for v in checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready",
                                "checks": checks}
        if not ready:
            body["down"] = [name for name, v in checks.items() if v != "ok"]
        return jsonify(body), 200 if ready else 503

    @app.get("/metrics")
    def prometheus() -> Response:
        return metrics.response()


def _ping_db(uow: PostgresUnitOfWork) -> None:
    with uow() as jobs:
        jobs.ping()


def _check(probe: Callable[[], Any]) -> str:
    try:
        probe()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
