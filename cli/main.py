"""``orchestrator``: migrate, serve the API, run a worker, recover, inspect jobs."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from uuid import UUID, uuid4

import click

from cli.preflight import BROKER, POSTGRES, REDIS, wait_for_services
from cli.startup import Unavailable, load_env_file, one_line_errors
from orchestrator.errors import ConfigError
from orchestrator.logs import configure_logging
from orchestrator.models import MAX_ERROR_MESSAGE
from orchestrator.settings import Settings, parse_processes, redact_url
from orchestrator.states import State

F = TypeVar("F", bound=Callable[..., Any])


def settings_from_env() -> Settings:
    return Settings.from_env(os.environ)


def clear_errors(func: F) -> F:
    """A wrong setting exits 2, a service that cannot be reached at start-up 69, each with
    one line naming the variable, not a traceback (cli.startup)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def needs(*services: str) -> Callable[[F], F]:
    """Wait (up to STARTUP_TIMEOUT) for ``services`` (cli.preflight's POSTGRES, REDIS,
    BROKER) before the command's body; under :func:`clear_errors`."""

    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wait_for_services(settings_from_env(), services)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="job-orchestrator", prog_name="orchestrator")
def main() -> None:
    """The Job Orchestrator of the Terraform cost-estimation pipeline.

    Configuration comes from environment variables, and from a .env file in the working
    directory when there is one (the environment wins; see .env.example). Exit codes: 2
    for a bad setting, 69 when a service it needs cannot be reached at start-up.
    """
    with one_line_errors():
        load_env_file()


@main.command()
@clear_errors
def migrate() -> None:
    """Create or upgrade the PostgreSQL schema (Alembic) at DATABASE_URL."""
    from db.migrate import upgrade

    settings = settings_from_env()
    if not settings.database_url:
        raise ConfigError("DATABASE_URL", "is not set")
    ensure_database(settings)
    configure_logging(settings.log_level)
    upgrade(settings.database_url)
    click.echo(f"migrated {redact_url(settings.database_url)} to head")


def ensure_database(settings: Settings) -> None:
    """Wait for PostgreSQL; create DATABASE_URL's database when the server has none of that
    name, and say so (or say in one line why it could not, and how to)."""
    import psycopg2

    from cli.preflight import MissingDatabase, first_line
    from db.migrate import create_database, database_name

    assert settings.database_url is not None
    try:
        wait_for_services(settings, [POSTGRES], schema=False)
        return
    except MissingDatabase:
        pass
    url = redact_url(settings.database_url)
    try:
        name = create_database(settings.database_url)
    except psycopg2.Error as exc:
        name = database_name(settings.database_url)
        raise Unavailable(f"PostgreSQL at DATABASE_URL={url} has no database {name!r} and "
                          f"cannot create it ({first_line(exc)}): create it as a user who "
                          f"may (CREATE DATABASE \"{name}\"), then migrate again") from None
    click.echo(f"created database {name!r} at DATABASE_URL={url}")


@main.command()
@clear_errors
def api() -> None:
    """Serve the internal API under gunicorn on ORCHESTRATOR_PORT (default 8001)."""
    from cli.serve import serve, use_multiprocess_metrics

    settings = settings_from_env()
    settings.require_services()
    settings.require_api_tokens()
    wait_for_services(settings, [POSTGRES, BROKER])
    configure_logging(settings.log_level)
    # Before api.app imports prometheus_client: /metrics then adds up every worker's counts.
    metrics = use_multiprocess_metrics()
    from api.app import create_app
    from tasks.chain import make_enqueuer

    # The API only sends: a light Celery app (broker and routing), not a worker's.
    serve(lambda: create_app(settings, enqueuer=make_enqueuer(settings)),
          host=settings.api_host, port=settings.api_port, workers=settings.api_workers,
          metrics=metrics)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-P", "--pool", type=click.Choice(["threads", "prefork"]), default="threads",
              show_default=True,
              help="threads: WORKER_CONCURRENCY stages in flight, threads of one or a few "
                   "processes (stages mostly wait on their services); prefork: one process "
                   "per stage.")
@click.option("--stages", help="Comma-separated stages whose queues this worker consumes "
                                "(e.g. planning,parsing); all four by default.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Stages in flight in all (default: WORKER_CONCURRENCY).")
@click.option("--processes", metavar="N|auto",
              help="Worker processes sharing them, threads pool only (default: "
                   "WORKER_PROCESSES, auto: one per CPU this worker may use, at most 4).")
@click.option("-n", "--hostname", help="Celery node name (name@host); with more than one "
                                       "process, each is name-<i>@host.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@clear_errors
def worker(pool: str, stages: str | None, concurrency: int | None, processes: str | None,
           hostname: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker holding up to WORKER_CONCURRENCY stages in flight, in one
    process per CPU by default (extra arguments go to Celery)."""
    from cli.workers import bind_to_supervisor, process_count, shares, supervise

    bind_to_supervisor()
    settings = settings_from_env()
    requested = (settings.worker_processes if processes is None
                 else parse_processes("--processes", processes))
    in_flight = concurrency or settings.worker_concurrency
    queues = stage_queue_names(settings, stages)
    if pool == "prefork":
        # (WORKER_PROCESSES, a deployment-wide setting, is for the threads pool's workers)
        if processes is not None and requested not in (None, 1):
            raise ConfigError("--processes", "applies to the threads pool; prefork runs "
                                             "one process a stage")
        count = 1
    else:
        count = process_count(requested, in_flight)
    settings.require_services()
    wait_for_services(settings, [POSTGRES, REDIS, BROKER])
    configure_logging(settings.log_level)
    if count > 1:
        sys.exit(supervise(
            concurrencies=shares(in_flight, count), hostname=hostname,
            child_args=["--pool", pool, *(["--stages", stages] if stages else []),
                        *celery_args],
            metrics_port=settings.worker_metrics_port,
            metrics_flush_interval=settings.metrics_flush_interval))
    from tasks.factory import create_celery_app

    app = create_celery_app(settings)
    # --quiet: no ASCII banner, so every line of the worker's output is JSON.
    app.start(["--quiet", "worker", "--pool", pool, "--concurrency", str(in_flight),
               "--loglevel", settings.log_level, "--queues", ",".join(queues),
               *(["--hostname", hostname] if hostname else []), *celery_args])


def stage_queue_names(settings: Settings, stages: str | None) -> list[str]:
    """The queues of ``--stages`` (case-insensitive, comma-separated; all four when not
    given); an unknown stage is a ConfigError naming it."""
    from orchestrator.stages import STAGE_STATES
    from tasks.chain import stage_queue

    by_name = {s.value.lower(): s for s in STAGE_STATES}
    wanted = [w.strip().lower() for w in (stages or ",".join(by_name)).split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise ConfigError("--stages", f"unknown stage {', '.join(unknown) or '(none)'!r}; "
                                      f"choose from {', '.join(by_name)}")
    return [stage_queue(settings.celery_queue, by_name[w]) for w in dict.fromkeys(wanted)]


@main.command()
@clear_errors
def recover() -> None:
    """Run one crash-recovery pass now and print how many jobs it resumed."""
    from tasks.factory import create_celery_app
    from tasks.metrics import flush_once
    from tasks.recovery import recovery_pass

    settings = settings_from_env()
    settings.require_services()
    wait_for_services(settings, [POSTGRES, REDIS, BROKER])
    configure_logging(settings.log_level)
    app = create_celery_app(settings)
    resumed = recovery_pass(app)
    flush_once(app)  # its resumes count in the workers' metrics too
    click.echo(f"resumed {resumed} job(s)")


@main.command()
@click.argument("job_id", type=click.UUID)
@click.option("--force", is_flag=True,
              help="Remove it even though its holder still heartbeats (it stops at its next "
                   "renewal; the fence keeps out its writes once the job is claimed again).")
@clear_errors
@needs(POSTGRES, REDIS)
def unlock(job_id: UUID, force: bool) -> None:
    """Remove a job's Redis lock that was not released: at once when no live attempt holds
    it (its holder stopped heartbeating, or none is running); one still heartbeating only
    with --force. Recovery then resumes the job. Exits 1 if the job is unknown or the lock
    is refused, 0 when it is removed or already free."""
    from cli.jobs_view import operator
    from cli.unlock import unlock as remove

    settings = settings_from_env()
    configure_logging(settings.log_level)
    done = remove(settings, job_id, force=force, operator=operator())
    click.echo(done.message, err=done.code != 0)
    sys.exit(done.code)


@main.command()
@clear_errors
def downstream() -> None:
    """Serve the reference downstream services on DOWNSTREAM_PORT (default 8002)."""
    from cli.serve import serve
    from downstream import DownstreamConfig, create_app

    settings = settings_from_env()
    try:
        config = DownstreamConfig.from_env(os.environ)
    except ValueError as exc:
        raise ConfigError("DOWNSTREAM", str(exc)) from exc
    configure_logging(settings.log_level)
    serve(lambda: create_app(config), host=settings.api_host, port=settings.downstream_port,
          workers=2)


@main.command()
@clear_errors
def up() -> None:
    """Run everything in the foreground: embedded PostgreSQL and Redis when DATABASE_URL /
    REDIS_URL are unset, migrations, the reference services, a worker and the API.
    Ctrl-C, SIGTERM or closing its terminal stops it all; if it is killed, its guard
    process stops the rest. One stack per data directory (ORCHESTRATOR_DATA_DIR)."""
    from cli.up import run_up

    run_up()


@main.command()
@clear_errors
def demo() -> None:
    """Push the sample Terraform plans through every stage on a local stack, with live
    progress, then print each job's transitions and cost summary. Exits 0 when every job
    ended as expected."""
    from cli.demo import run_demo

    sys.exit(run_demo())


@main.group()
def jobs() -> None:
    """An operator's view of jobs, read from PostgreSQL."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in State], case_sensitive=False),
              help="Only jobs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@clear_errors
@needs(POSTGRES)
def jobs_list(state: str | None, limit: int, as_json: bool) -> None:
    """Newest jobs first: id, state, retries, age (since created), error (shortened; `jobs
    show` gives it whole)."""
    from cli.jobs_view import list_jobs

    click.echo(list_jobs(settings_from_env(), State(state.upper()) if state else None, limit,
                         as_json))


@jobs.command("show")
@click.argument("job_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of text.")
@clear_errors
@needs(POSTGRES)
def jobs_show(job_id: UUID, as_json: bool) -> None:
    """A job's state, its lock (holder, TTL, last heartbeat), transitions and every stage
    attempt with its duration and error."""
    from cli.jobs_view import show_job

    text = show_job(settings_from_env(), job_id, as_json)
    if text is None:
        click.echo(f"job {job_id} not found", err=True)
        sys.exit(1)
    click.echo(text)


def _fail_message(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Checked as an argument, before any service is waited for."""
    if not value.strip() or len(value) > MAX_ERROR_MESSAGE:
        raise click.BadParameter(f"must be 1 to {MAX_ERROR_MESSAGE} characters, not only "
                                 "spaces")
    return value


@jobs.command("fail")
@click.argument("job_id", type=click.UUID)
@click.option("-m", "--message", required=True, callback=_fail_message,
              help=f"Why: the job's error_message (1 to {MAX_ERROR_MESSAGE} characters).")
@clear_errors
@needs(POSTGRES, BROKER)
def jobs_fail(job_id: UUID, message: str) -> None:
    """Move a job that has not ended to FAILED now, as the API's fail does: a stage in
    flight is cancelled and writes nothing. Exits 1 if the job is unknown or has ended."""
    from cli.jobs_view import fail
    from orchestrator.errors import JobNotFound, JobTerminal

    try:
        click.echo(fail(settings_from_env(), job_id, message))
    except (JobNotFound, JobTerminal) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@jobs.command("redrive")
@click.argument("job_id", type=click.UUID)
@click.option("--new-id", type=click.UUID,
              help="The new job's id (repeating the command with it changes nothing); a "
                   "fresh one by default.")
@clear_errors
@needs(POSTGRES, BROKER)
def jobs_redrive(job_id: UUID, new_id: UUID | None) -> None:
    """Run a FAILED job again as a new job, with its input: each stage that succeeded
    reuses its stored output, the rest are called. Exits 1 if the job is unknown or not
    FAILED."""
    from cli.jobs_view import _uow
    from orchestrator.errors import JobIdInUse, JobNotFound, NotFailed
    from orchestrator.service import redrive_job
    from tasks.chain import make_enqueuer

    settings = settings_from_env()
    try:
        result = redrive_job(_uow(settings), make_enqueuer(settings), job_id,
                             new_id or uuid4(), outbox_after=settings.outbox_enqueue_after)
    except (JobNotFound, NotFailed, JobIdInUse) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    said = "redriven as" if result.started else "already redriven as"
    click.echo(f"job {job_id} {said} {result.job.job_id} ({result.job.current_state.value}; "
               f"resumes at {result.resumes_at.value})")


class Duration(click.ParamType):
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or ``0s``) as seconds."""

    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        text = str(value).strip().lower()
        number, unit = text[:-1], text[-1:]
        try:
            seconds = float(number) * self.UNITS[unit]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m or 0s", param, ctx)
        if seconds < 0 or seconds != seconds or seconds == float("inf"):
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m or 0s", param, ctx)
        return seconds


@jobs.command("prune")
@click.option("--older-than", type=Duration(), default="30d", show_default=True,
              help="Delete COMPLETED and FAILED jobs that ended longer ago than this (30d, "
                   "12h, 90m, 0s).")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=500, show_default=True,
              help="Jobs deleted per transaction.")
@clear_errors
@needs(POSTGRES)
def jobs_prune(older_than: float, batch_size: int) -> None:
    """Delete terminal jobs that ended before then, with their attempts, transitions and
    events, in small batches that lock only their own rows (safe while jobs run). Never a
    job that has not ended, one whose notification is still owed, or one whose redrive is
    still running."""
    from db.engine import make_engine
    from db.retention import prune

    settings = settings_from_env()
    if not settings.database_url:
        raise ConfigError("DATABASE_URL", "is not set")
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        done = prune(engine, older_than, batch=batch_size)
    finally:
        engine.dispose()
    click.echo(f"pruned {done.deleted} job(s) that ended before {done.cutoff.isoformat()}")
    if done.kept:
        click.echo(f"kept {done.kept} that ended before then: a notification still owed, a "
                   "redrive still running, or in use; a later prune takes them")
