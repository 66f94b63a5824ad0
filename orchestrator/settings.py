"""Configuration, read once from the environment into one typed, validated object.

Every variable is listed with its default in ``.env.example``. A bad value raises
:class:`ConfigError` naming the variable; the CLI prints that one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import ConfigError
from orchestrator.stages import STAGE_DEFINITIONS, StageSpec
from orchestrator.states import State

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class _Env:
    """Typed reads of one environment mapping; every failure names its variable."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False,
               maximum: float = 1e9) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ConfigError(name, f"must be {kind}, got {value!r}") from None
        # NaN fails both comparisons; infinity fails the maximum.
        if not minimum <= number <= maximum:
            raise ConfigError(name, f"must be between {minimum:g} and {maximum:g}, got {value!r}")
        return number

    def integer(self, name: str, default: int, *, minimum: int, maximum: int = 10**9) -> int:
        return int(self.number(name, default, minimum=minimum, integer=True, maximum=maximum))

    def processes(self, name: str) -> int | None:
        return parse_processes(name, self.raw(name))

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=1, maximum=65535)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(name, f"must be true or false, got {value!r}")

    def url(self, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name) or default
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ConfigError(name, f"must be a URL starting with one of {', '.join(schemes)}")
        if parts.scheme.startswith("http") and not parts.netloc:
            raise ConfigError(name, "must include a host")
        return value


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced, safe to log or print."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def broker_from_redis(redis_url: str | None) -> str | None:
    """The Celery broker URL for a redis-py URL: the same, except that a unix socket is
    ``redis+socket://`` to Kombu where redis-py says ``unix://``."""
    if redis_url and redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


#: Set by the supervisor of a worker's few processes (cli.workers) in each one's
#: environment: the directory their metrics snapshots go to (which it serves), and every
#: process's share of WORKER_CONCURRENCY, comma-separated (for each one's connection
#: budget, tasks.recovery).
WORKER_METRICS_DIR_ENV = "ORCHESTRATOR_WORKER_METRICS_DIR"
WORKER_SHARES_ENV = "ORCHESTRATOR_WORKER_SHARES"


def parse_processes(name: str, value: str | None) -> int | None:
    """A count of worker processes, 1 to 64, or None for ``auto`` (or unset)."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    value = value.strip()
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ConfigError(name, f"must be 'auto' or an integer from 1 to 64, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Everything the orchestrator reads from its environment."""

    # URLs may carry passwords: kept out of repr, printed only through redact_url.
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    broker_url: str | None = field(default=None, repr=False)
    celery_queue: str = "orchestrator"
    stages: tuple[StageSpec, ...] = ()
    retry_backoff_base: float = 2.0
    retry_backoff_max: float = 60.0
    retry_jitter: bool = True
    hard_timeout_grace: float = 10.0
    lock_ttl: float = 300.0
    lock_key_prefix: str = "job:lock:"
    recovery_interval: float = 60.0
    recovery_stale_after: float = 300.0
    max_lost_attempts: int = 3
    #: The largest stage output stored; a larger reply is a permanent error (1 MiB).
    max_stage_output_bytes: int = 1 << 20
    downstream_token: str | None = field(default=None, repr=False)
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_disabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    api_workers: int = 2
    downstream_port: int = 8002
    worker_concurrency: int = 100
    #: Worker processes `orchestrator worker` runs, sharing WORKER_CONCURRENCY between them;
    #: None ("auto"): one per CPU this process may use (cli.workers.usable_cpus).
    worker_processes: int | None = None
    # Terminal-event notifications and the enqueue outbox (orchestrator.outbox).
    notify_url: str | None = field(default=None, repr=False)
    notify_secret: str | None = field(default=None, repr=False)
    notify_timeout: float = 5.0
    notify_retry_base: float = 1.0
    notify_retry_max: float = 300.0
    outbox_interval: float = 1.0
    outbox_enqueue_after: float = 2.0
    startup_timeout: float = 30.0
    log_level: str = "INFO"
    # Stage metrics (orchestrator.metrics, tasks.metrics): how often each worker process
    # adds its counts up in Redis, under which prefix, and the worker's own port, if any.
    metrics_flush_interval: float = 5.0
    metrics_key_prefix: str = "metrics:"
    worker_metrics_port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        env = _Env(environ)
        redis_url = env.url("REDIS_URL", None, ("redis", "rediss", "unix", "redis+socket"))
        lock_ttl = env.number("LOCK_TTL", 300.0, minimum=1)
        log_level = env.text("LOG_LEVEL", "INFO").upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(sorted(_LOG_LEVELS))}")
        return cls(
            database_url=env.url("DATABASE_URL", None, ("postgresql", "postgresql+psycopg2",
                                                        "postgres")),
            redis_url=redis_url,
            broker_url=env.url("CELERY_BROKER_URL", broker_from_redis(redis_url),
                               ("redis", "rediss", "redis+socket", "amqp", "amqps", "pyamqp")),
            celery_queue=env.text("CELERY_QUEUE", "orchestrator"),
            stages=_stage_specs(env),
            retry_backoff_base=env.number("RETRY_BACKOFF_BASE", 2.0, minimum=0),
            retry_backoff_max=env.number("RETRY_BACKOFF_MAX", 60.0, minimum=0),
            retry_jitter=env.boolean("RETRY_JITTER", True),
            hard_timeout_grace=env.number("HARD_TIMEOUT_GRACE", 10.0, minimum=1),
            lock_ttl=lock_ttl,
            lock_key_prefix=env.text("LOCK_KEY_PREFIX", "job:lock:"),
            recovery_interval=env.number("RECOVERY_INTERVAL", 60.0, minimum=0.1),
            recovery_stale_after=env.number("RECOVERY_STALE_AFTER", lock_ttl, minimum=0.1),
            max_lost_attempts=env.integer("MAX_LOST_ATTEMPTS", 3, minimum=1),
            max_stage_output_bytes=env.integer("MAX_STAGE_OUTPUT_BYTES", 1 << 20, minimum=1024,
                                               maximum=1 << 30),
            downstream_token=env.raw("DOWNSTREAM_TOKEN"),
            api_tokens=tuple(t.strip() for t in env.text("ORCHESTRATOR_API_TOKENS", "").split(",")
                             if t.strip()),
            auth_disabled=env.boolean("ORCHESTRATOR_AUTH_DISABLED", False),
            api_host=env.text("ORCHESTRATOR_HOST", "127.0.0.1"),
            api_port=env.port("ORCHESTRATOR_PORT", 8001),
            api_workers=env.integer("ORCHESTRATOR_API_WORKERS", 2, minimum=1),
            downstream_port=env.port("DOWNSTREAM_PORT", 8002),
            worker_concurrency=env.integer("WORKER_CONCURRENCY", 100, minimum=1),
            worker_processes=env.processes("WORKER_PROCESSES"),
            **_notify_settings(env),
            startup_timeout=env.number("STARTUP_TIMEOUT", 30.0, minimum=0, maximum=86400),
            log_level=log_level,
            **_metrics_settings(env),
        )

    def stage(self, state: State) -> StageSpec:
        for spec in self.stages:
            if spec.state is state:
                return spec
        raise KeyError(state)

    def require_services(self) -> None:
        """Raise ConfigError unless PostgreSQL and Redis are configured."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL", "is not set")
        if not self.redis_url:
            raise ConfigError("REDIS_URL", "is not set")

    def require_api_tokens(self) -> None:
        """The API refuses to start open unless told so explicitly."""
        if not self.api_tokens and not self.auth_disabled:
            raise ConfigError("ORCHESTRATOR_API_TOKENS",
                              "is empty; set tokens or ORCHESTRATOR_AUTH_DISABLED=true")


def _notify_settings(env: _Env) -> dict[str, Any]:
    """NOTIFY_* and OUTBOX_*: the secret is required with a URL (an unsigned announcement
    could not be told from a forged one) and is never logged."""
    url = env.url("NOTIFY_URL", None, ("http", "https"))
    secret = env.raw("NOTIFY_SECRET")
    if url and not secret:
        raise ConfigError("NOTIFY_SECRET", "is required when NOTIFY_URL is set")
    return dict(
        notify_url=url,
        notify_secret=secret,
        notify_timeout=env.number("NOTIFY_TIMEOUT", 5.0, minimum=0.1, maximum=300),
        notify_retry_base=env.number("NOTIFY_RETRY_BASE", 1.0, minimum=0.01, maximum=3600),
        notify_retry_max=env.number("NOTIFY_RETRY_MAX", 300.0, minimum=0.01, maximum=86400),
        outbox_interval=env.number("OUTBOX_INTERVAL", 1.0, minimum=0.05, maximum=3600),
        outbox_enqueue_after=env.number("OUTBOX_ENQUEUE_AFTER", 2.0, minimum=0.1,
                                        maximum=3600),
    )


#: The lock prefix's usual ending, replaced by "metrics:" to name the metrics' keys.
_LOCK_ENDING = "job:lock:"


def _metrics_settings(env: _Env) -> dict[str, Any]:
    """METRICS_* and WORKER_METRICS_PORT. The metrics' Redis keys belong to the deployment
    as its locks do: by default the lock prefix with ``job:lock:`` replaced by
    ``metrics:`` (``job:lock:`` gives ``metrics:``), so two deployments sharing a Redis
    that keep their locks apart keep their metrics apart too."""
    lock_prefix = env.text("LOCK_KEY_PREFIX", _LOCK_ENDING)
    if lock_prefix.endswith(_LOCK_ENDING):
        derived = lock_prefix[: -len(_LOCK_ENDING)] + "metrics:"
    else:
        derived = lock_prefix + "metrics:"
    port = env.raw("WORKER_METRICS_PORT")
    return dict(
        metrics_flush_interval=env.number("METRICS_FLUSH_INTERVAL", 5.0, minimum=0.05,
                                          maximum=3600),
        metrics_key_prefix=env.text("METRICS_KEY_PREFIX", derived),
        worker_metrics_port=None if port is None else env.port("WORKER_METRICS_PORT", 0),
    )


def _stage_specs(env: _Env) -> tuple[StageSpec, ...]:
    port = env.port("DOWNSTREAM_PORT", 8002)
    specs: list[StageSpec] = []
    for d in STAGE_DEFINITIONS:
        url = env.url(d.url_variable, f"http://127.0.0.1:{port}{d.default_path}",
                      ("http", "https"))
        assert url is not None
        specs.append(StageSpec(
            definition=d,
            url=url,
            timeout=env.number(f"{d.name}_TIMEOUT", d.default_timeout, minimum=0.1),
            max_retries=env.integer(f"{d.name}_MAX_RETRIES", d.default_max_retries, minimum=0),
        ))
    return tuple(specs)
