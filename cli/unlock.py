"""A job's Redis lock as an operator sees it (``jobs show``), and ``orchestrator unlock``.

Who holds the lock is read from PostgreSQL: the stage claims the job right after taking
the lock, bumping its fence, and opens a RUNNING attempt stamped with that fence; so the
holder is the RUNNING attempt of the job's current stage whose fence is the job's. Whether
it is alive is read there too: the holder's heartbeat renews the lock and then writes the
job's ``last_progress_at``, every LOCK_TTL/3 (:class:`orchestrator.runner.Heartbeat`). A
holder is taken for alive while that sign of life is at most :data:`STALE_AFTER_BEATS`
intervals old (a beat that failed on a passing error is forgiven), by PostgreSQL's clock
alone. The key's own TTL is shown but not trusted for this: it says when the key was last
renewed only if the holder's LOCK_TTL is ours, and a key with nobody behind it (a crashed
holder's, one set by hand, one that never expires) looks as fresh as any.

Removing is a compare-and-delete on the token read before PostgreSQL was (redis-py's own
release script), so a lock taken by someone else in between is never removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Connection, and_, func, select

from db.schema import jobs, stage_executions
from orchestrator.logs import job_context, log_event
from orchestrator.models import AttemptStatus, iso
from orchestrator.settings import Settings, redact_url
from orchestrator.states import TERMINAL, State
from tasks.lock import RedisLocks, token_process

log = logging.getLogger(__name__)

#: A holder whose last heartbeat is older than this many intervals (LOCK_TTL/3 each) has
#: stopped: killed, frozen, cut off, or past its timeout and grace (it stops renewing then).
STALE_AFTER_BEATS = 2


@dataclass(frozen=True)
class Holder:
    """The attempt that claimed the job with its current fence and is still RUNNING."""

    stage: str
    attempt: int
    task_id: str | None
    started_at: datetime

    #: Where its Celery task runs, as the workers said when asked (:func:`running_on`):
    #: ``celery@host pid 123``, "" when none said it runs it, None when not asked or no
    #: answer could be had.
    worker: str | None = None

    def __str__(self) -> str:
        task = f", task {self.task_id}" if self.task_id else ""
        where = {None: "", "": ", on no worker that answered"}.get(
            self.worker, f", on {self.worker}")
        return (f"attempt {self.attempt} of {self.stage} (since {iso(self.started_at)}"
                f"{task}{where})")


@dataclass(frozen=True)
class JobLock:
    job_id: UUID
    key: str
    token: bytes | None  #: None: the lock is free
    ttl: float | None  #: seconds left; None when free or when the key never expires
    state: State
    correlation_id: str | None
    holder: Holder | None
    quiet: float  #: seconds since the job's last sign of life, by PostgreSQL's clock
    beat: float  #: the heartbeat interval, LOCK_TTL/3

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def taken_by(self) -> tuple[str, int] | None:
        """(host, pid) of the process that took the lock, as its token says."""
        return token_process(self.token)

    @property
    def live(self) -> bool:
        """Held by an attempt that still heartbeats."""
        return (self.held and self.holder is not None
                and self.quiet <= STALE_AFTER_BEATS * self.beat)

    def why_stale(self) -> str:
        if self.state in TERMINAL:
            return f"the job is {self.state.value}"
        if self.holder is None:
            return f"no attempt of {self.state.value} is running"
        return (f"no heartbeat for {_s(self.quiet)} (one is due every {_s(self.beat)}, "
                f"LOCK_TTL/3)")

    def summary(self) -> str:
        """One line for ``jobs show``, after ``lock``."""
        if not self.held:
            if self.holder is None:
                return "free"
            # Its attempt is still open: the worker died or lost the lock (expired while
            # it was paused), or recovery has just resumed the job.
            return (f"free, but {self.holder} is still RUNNING, last heartbeat "
                    f"{_s(self.quiet)} ago: its worker died or lost the lock; recovery "
                    "resumes the job")
        ttl = f"ttl {self.ttl:.1f} s" if self.ttl is not None else "no ttl: never expires"
        if self.taken_by is not None:
            ttl += f", taken by {self.taken_by[0]} pid {self.taken_by[1]}"
        if self.live:
            return f"held ({ttl}) by {self.holder}, heartbeat {_s(self.quiet)} ago"
        by = f" by {self.holder}" if self.holder else ""
        return (f"held ({ttl}){by}, stale: {self.why_stale()}; `orchestrator unlock "
                f"{self.job_id}` removes it")

    def to_json(self) -> dict[str, Any]:
        holder = None if self.holder is None else {
            "stage_name": self.holder.stage, "attempt_number": self.holder.attempt,
            "celery_task_id": self.holder.task_id, "started_at": iso(self.holder.started_at),
            "running_on": self.holder.worker}
        if not self.held:  # an attempt still open without the lock: its holder is gone
            return {"status": "free"} if holder is None else {
                "status": "free", "open_attempt": holder,
                "heartbeat_age_s": round(self.quiet, 3)}
        taken_by = None if self.taken_by is None else {
            "host": self.taken_by[0], "pid": self.taken_by[1]}
        return {"status": "held" if self.live else "stale", "key": self.key,
                "ttl_s": None if self.ttl is None else round(self.ttl, 3),
                "taken_by": taken_by, "holder": holder,
                "heartbeat_age_s": round(self.quiet, 3), "heartbeat_interval_s": self.beat}


def redis_client(settings: Settings, timeout: float = 5.0) -> redis.Redis:
    assert settings.redis_url, "REDIS_URL is required"
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                socket_connect_timeout=timeout)


def running_on(settings: Settings, task_id: str, timeout: float = 1.0) -> str | None:
    """Which worker runs Celery task ``task_id`` now, by asking them all over the broker
    (``celery -A tasks inspect query_task``): ``celery@host pid 123`` (the pool process's
    pid), "" when no worker that answered within ``timeout`` runs it, None when the broker
    cannot be asked. Only shown: whether a holder is alive is its heartbeat's to say."""
    from tasks.chain import check_broker, create_sender_app

    try:
        app = create_sender_app(settings)
        check_broker(app)  # bounded: the inspect below would retry a dead broker at length
        # broadcast, not inspect(): inspect merges the replies by node name, and two
        # workers left with the same name (celery@host) would hide each other's.
        replies = app.control.broadcast("query_task", arguments={"ids": [task_id]},
                                        reply=True, timeout=timeout) or []
    except Exception:  # the broker: only the line's detail depends on it
        return None
    for reply in replies:
        for worker, tasks in reply.items():
            state, info = (tasks or {}).get(task_id, (None, {}))
            if state == "active":
                return f"{worker} pid {info.get('worker_pid')}"
    return ""


def inspect(client: redis.Redis, connection: Connection, settings: Settings, job_id: UUID
            ) -> JobLock | None:
    """The job's lock and its holder; None when the job does not exist. Redis is read
    first, so that the token a removal compares with is no newer than what PostgreSQL
    said of its holder."""
    key = RedisLocks(client, prefix=settings.lock_key_prefix, ttl=settings.lock_ttl).key(job_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        token, pttl = pipe.execute()
    j, se = jobs.c, stage_executions.c
    row = connection.execute(
        select(j.current_state, j.correlation_id,
               func.extract("epoch", func.clock_timestamp() - j.last_progress_at),
               se.stage_name, se.attempt_number, se.celery_task_id, se.started_at)
        .select_from(jobs.outerjoin(stage_executions, and_(
            se.job_id == j.job_id, se.stage_name == j.current_state, se.fence == j.fence,
            se.status == AttemptStatus.RUNNING.value)))
        .where(j.job_id == job_id)
        .order_by(se.attempt_number.desc()).limit(1)).first()
    if row is None:
        return None
    state, correlation_id, quiet, stage, attempt, task_id, started_at = row
    holder = None
    if stage is not None:
        worker = running_on(settings, task_id) if task_id else None
        holder = Holder(stage, attempt, task_id, started_at, worker)
    return JobLock(job_id, key, token, pttl / 1000 if token is not None and pttl >= 0 else None,
                   State(state), correlation_id, holder, max(0.0, float(quiet)),
                   settings.lock_ttl / 3)


def lock_summary(settings: Settings, connection: Connection, job_id: UUID
                 ) -> tuple[str, dict[str, Any]]:
    """``jobs show``'s lock line and JSON. Redis is not waited for: the job's view is
    PostgreSQL's, and an operator looking into an outage needs it most."""
    if not settings.redis_url:
        error = "REDIS_URL is not set"
    else:
        client = redis_client(settings, timeout=2.0)
        try:
            found = inspect(client, connection, settings, job_id)
        except redis.RedisError as exc:
            from cli.preflight import first_line

            error = f"cannot reach Redis at REDIS_URL={redact_url(settings.redis_url)}: " \
                    f"{first_line(exc)}"
        else:
            if found is not None:  # else pruned since the caller read it
                return found.summary(), found.to_json()
            error = "the job was deleted meanwhile"
        finally:
            client.close()
    return f"unknown ({error})", {"status": "unknown", "error": error}


@dataclass(frozen=True)
class Unlocked:
    code: int  #: the exit code: 0 done (or nothing to do), 1 refused or unknown job
    message: str


def unlock(settings: Settings, job_id: UUID, *, force: bool, operator: str) -> Unlocked:
    """Remove the job's lock unless its holder still heartbeats (``force``: even then)."""
    from db.engine import make_engine

    assert settings.database_url, "DATABASE_URL is required"
    engine = make_engine(settings.database_url, pool_size=1)
    client = redis_client(settings)
    try:
        with engine.connect() as connection:
            lock = inspect(client, connection, settings, job_id)
        if lock is None:
            return Unlocked(1, f"job {job_id} not found")
        return _unlock(client, settings, lock, force, operator)
    finally:
        client.close()
        engine.dispose()


def _unlock(client: redis.Redis, settings: Settings, lock: JobLock, force: bool,
            operator: str) -> Unlocked:
    job = f"job {lock.job_id}"
    if not lock.held:
        return Unlocked(0, f"{job}: lock free; nothing to do")
    if lock.live and not force:
        return Unlocked(1, f"{job}: lock held by {lock.holder}, heartbeat {_s(lock.quiet)} "
                           f"ago: its holder is alive, so it stays. `orchestrator unlock "
                           f"{lock.job_id} --force` removes it anyway")
    try:
        client.lock(lock.key, thread_local=False).do_release(lock.token)
    except redis.exceptions.LockNotOwnedError:
        if client.exists(lock.key):
            return Unlocked(1, f"{job}: the lock changed hands while it was looked at; "
                               "nothing removed (run it again to look anew)")
        return Unlocked(0, f"{job}: the lock was released meanwhile; nothing to do")
    event = "lock.force_released" if lock.live else "lock.stale_released"
    with job_context(lock.job_id, lock.correlation_id):
        log_event(log, event, logging.WARNING, operator=operator, state=lock.state.value,
                  stage=lock.holder.stage if lock.holder else None,
                  attempt=lock.holder.attempt if lock.holder else None,
                  heartbeat_age_s=round(lock.quiet, 3), ttl_s=lock.ttl,
                  reason="forced while its holder heartbeats" if lock.live
                  else lock.why_stale())
    if lock.state in TERMINAL:
        return Unlocked(0, f"{job}: removed the lock left on a {lock.state.value} job")
    resume = max(0.0, settings.recovery_stale_after - lock.quiet)
    then = (f"recovery resumes the job once it has been quiet RECOVERY_STALE_AFTER="
            f"{settings.recovery_stale_after:g} s" + (f" (in about {_s(resume)})" if resume
                                                      else " (at its next pass)"))
    if not lock.live:
        return Unlocked(0, f"{job}: removed the stale lock ({lock.why_stale()}); {then}")
    return Unlocked(0, (
        f"{job}: removed the lock of {lock.holder} by force. Its holder finds it gone at its "
        f"next renewal (within {_s(lock.beat)}) and discards any result after that; once "
        f"the job is claimed again, the fence refuses every write of the old holder; "
        f"{then}"))


def _s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
