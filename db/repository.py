"""The job repository on PostgreSQL: functions of one connection, returning domain objects.

The caller owns the transaction (see :mod:`db.uow`). Every write that changes a job is a
compare-and-set on its state, and for stage workers on its fence too: zero rows means
"someone else owns this job now", reported as None/False, never as an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, and_, func, literal_column, select, text, tuple_, update

from db.schema import job_enqueues, job_events, job_transitions, jobs, stage_executions
from orchestrator.models import (
    WORKER_LOST,
    AttemptCounts,
    AttemptStatus,
    Job,
    JobDetail,
    Notification,
    OpenedAttempt,
    PendingEnqueue,
    StageAttempt,
    StartedJob,
    TerminalEvent,
    Transition,
)
from orchestrator.stages import STAGE_STATES
from orchestrator.states import TERMINAL, State, transition

_TERMINAL = [s.value for s in TERMINAL]
#: An attempt's duration so far, in ms: what closing it stores in ``duration_ms``.
_ELAPSED_MS = text("(extract(epoch FROM clock_timestamp() - started_at) * 1000)::int")


#: :meth:`JobRepository.open_attempt` and :meth:`JobRepository.advance`: one statement
#: each (one round trip), in PL/pgSQL functions whose plans each connection keeps
#: (migration 0007 holds them and what they do), in psycopg2's own parameter style (run by
#: :meth:`JobRepository._driver`).
_OPEN_ATTEMPT = ("SELECT * FROM orchestrator_open_attempt(%(job_id)s, %(state)s, %(lost)s, "
                 "%(first)s, %(task_id)s, %(previous)s)")
_ADVANCE = ("SELECT * FROM orchestrator_advance(%(job_id)s, %(state)s, %(to_state)s, "
            "%(reason)s, %(fence)s, %(attempt)s, %(terminal)s, %(output)s, "
            "%(plan_reference)s, %(result_reference)s, %(reused_from)s)")
_ADVANCE_FIELDS = frozenset({"plan_reference", "result_reference"})

#: :meth:`JobRepository.insert_if_absent` (a job created, not started) and the outbox
#: row's clearing after a start, likewise run by psycopg2 itself (building and compiling
#: them through SQLAlchemy was about a quarter of the API's CPU a start).
_INSERT_IF_ABSENT = """
INSERT INTO jobs (job_id, current_state, input, correlation_id, redriven_from, retry_count,
                  fence, resume_count, created_at, updated_at, last_progress_at)
VALUES (CAST(%(job_id)s AS uuid), 'UPLOADED', CAST(%(input)s AS jsonb), %(correlation_id)s,
        CAST(%(redriven_from)s AS uuid), 0, 0, 0, now(), now(), now())
ON CONFLICT (job_id) DO NOTHING
RETURNING true
"""
#: :meth:`JobRepository.start`: the insert, the move and the outbox row in one statement
#: (migration 0008), likewise run by psycopg2.
_START = ("SELECT s.created, s.moved, s.mismatch, (s.job).* FROM orchestrator_start_job("
          "%(job_id)s, %(input)s, %(check_input)s, %(correlation_id)s, %(redriven_from)s, "
          "%(reason)s, %(outbox_delay)s) AS s")
_ENQUEUE_SENT = "DELETE FROM job_enqueues WHERE job_id = CAST(%(job_id)s AS uuid)"


#: :meth:`JobRepository.claim_events`: lock the due pending events past other relays
#: (SKIP LOCKED), count the try and lease each for as long as the tries before it in this
#: batch and its own may take, in one statement.
_CLAIM_EVENTS = text("""
WITH due AS (
    SELECT event_id, next_attempt_at FROM job_events
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT event_id, row_number() OVER (ORDER BY next_attempt_at, event_id) AS n FROM due
)
UPDATE job_events e
SET attempts = e.attempts + 1,
    next_attempt_at = now() + make_interval(secs => (ranked.n + 1) * :timeout)
FROM ranked, jobs j
WHERE e.event_id = ranked.event_id AND j.job_id = e.job_id
RETURNING ranked.n, e.event_id, e.job_id, e.state, e.error_message, e.plan_reference,
          e.result_reference, e.completed_at, e.redriven_from, e.attempts, j.correlation_id
""")

#: :meth:`JobRepository.claim_enqueues`, likewise, with the job's state and fence now.
_CLAIM_ENQUEUES = text("""
WITH due AS (
    SELECT job_id FROM job_enqueues WHERE next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE job_enqueues e
SET attempts = e.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
FROM due, jobs j
WHERE e.job_id = due.job_id AND j.job_id = e.job_id
RETURNING e.job_id, e.from_state, e.correlation_id, e.fence, e.attempts, j.current_state,
          j.fence AS current_fence, e.created_at
""")

#: :meth:`JobRepository.skip_events`.
_SKIP_EVENTS = text("""
WITH due AS (
    SELECT event_id FROM job_events
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE job_events e SET status = 'skipped', last_error = :reason
FROM due, jobs j
WHERE e.event_id = due.event_id AND j.job_id = e.job_id
RETURNING e.event_id, e.job_id, j.correlation_id
""")


def _in(seconds: float) -> Any:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _uuid(value: UUID | str | None) -> UUID | None:
    """A uuid column read by psycopg2 itself: a UUID where SQLAlchemy's dialect has
    registered psycopg2's adapter on the connection, else a str."""
    return UUID(value) if isinstance(value, str) else value


def _job(row: Any) -> Job:
    """A ``jobs`` row (a RowMapping) as a domain Job."""
    return Job(
        job_id=row["job_id"],
        current_state=State(row["current_state"]),
        previous_state=State(row["previous_state"]) if row["previous_state"] else None,
        retry_count=row["retry_count"],
        error_message=row["error_message"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        plan_reference=row["plan_reference"],
        result_reference=row["result_reference"],
        correlation_id=row["correlation_id"],
        fence=row["fence"],
        input=row["input"] or {},
        redriven_from=row["redriven_from"],
    )


class JobRepository:
    """Queries and conditional writes for jobs, their attempts and their history."""

    def __init__(self, connection: Connection | None = None, *,
                 lazy: Callable[[], Connection] | None = None,
                 lazy_driver: Callable[[], Any] | None = None):
        """On a SQLAlchemy ``connection`` (a transaction), or on connections made at first
        use (``lazy``: SQLAlchemy's; ``lazy_driver``: psycopg2's own), for a block that runs
        one statement (:class:`db.uow.PostgresUnitOfWork`'s ``single``)."""
        self._c, self._lazy, self._lazy_driver = connection, lazy, lazy_driver
        self._driver_connection: Any = None

    @property
    def c(self) -> Connection:
        if self._c is None:
            assert self._lazy is not None
            self._c = self._lazy()
        return self._c

    def _dbapi(self) -> Any:
        if self._c is None and self._lazy_driver is not None:
            if self._driver_connection is None:
                self._driver_connection = self._lazy_driver()
            return self._driver_connection
        return self.c.connection.dbapi_connection

    def _driver(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of one statement run by psycopg2 itself, on this Connection's own
        DBAPI connection (so in its transaction, if it has one), or on the pool's
        connection itself in a single-statement block: for the two statements every stage
        runs (:meth:`open_attempt`, :meth:`advance`). SQLAlchemy's execution around a
        statement (its execution context, result and row objects) cost about a third of a
        millisecond of CPU each, and its Connection around a checkout as much again, under
        the GIL the whole worker shares; these two statements need none of it. Values come
        as psycopg2 gives them (a uuid as a str; jsonb already decoded)."""
        with self._dbapi().cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.description is None:  # no rows to return (no RETURNING)
                return None
            row = cursor.fetchone()
            if row is None:
                return None
            return dict(zip([column.name for column in cursor.description], row,
                            strict=True))

    def get(self, job_id: UUID, *, for_update: bool = False) -> Job | None:
        query = select(jobs).where(jobs.c.job_id == job_id)
        if for_update:
            query = query.with_for_update()
        row = self.c.execute(query).mappings().first()
        return _job(row) if row else None

    def insert_if_absent(self, job_id: UUID, input: dict[str, Any],
                         correlation_id: str | None, *, redriven_from: UUID | None = None
                         ) -> bool:
        return self._driver(_INSERT_IF_ABSENT, {
            "job_id": str(job_id), "input": json.dumps(input),
            "correlation_id": correlation_id,
            "redriven_from": str(redriven_from) if redriven_from else None,
        }) is not None

    def start(self, job_id: UUID, input: dict[str, Any], correlation_id: str | None, *,
              check_input: bool, reason: str, outbox_delay: float,
              redriven_from: UUID | None = None) -> StartedJob:
        row = self._driver(_START, {
            "job_id": str(job_id), "input": json.dumps(input), "check_input": check_input,
            "correlation_id": correlation_id,
            "redriven_from": str(redriven_from) if redriven_from else None,
            "reason": reason, "outbox_delay": outbox_delay,
        })
        assert row is not None  # the function returns one row, always
        created, moved, mismatch = row.pop("created"), row.pop("moved"), row.pop("mismatch")
        job = None if row["job_id"] is None else _job(
            {**row, "job_id": _uuid(row["job_id"]), "redriven_from": _uuid(row["redriven_from"])})
        return StartedJob(job=job, created=created, moved=moved, mismatch=mismatch)

    def move(self, job_id: UUID, from_state: State, to_state: State, reason: str, *,
             fence: int | None = None, error_message: str | None = None,
             fields: dict[str, Any] | None = None) -> Job | None:
        transition(from_state, to_state, job_id=str(job_id))  # refused in code first
        values: dict[str, Any] = dict(
            current_state=to_state.value, previous_state=from_state.value, state_reason=reason,
            updated_at=func.now(), last_progress_at=func.now(), next_attempt_at=None,
            **(fields or {}))
        if from_state is State.UPLOADED:
            values["started_at"] = func.coalesce(jobs.c.started_at, func.now())
        if to_state in TERMINAL:
            values["completed_at"] = func.now()
        if error_message is not None:
            values["error_message"] = error_message
        condition = and_(jobs.c.job_id == job_id, jobs.c.current_state == from_state.value)
        if fence is not None:
            condition = and_(condition, jobs.c.fence == fence)
        row = self.c.execute(
            update(jobs).where(condition).values(**values).returning(*jobs.c)
        ).mappings().first()
        return _job(row) if row else None

    def claim(self, job_id: UUID, state: State) -> int | None:
        return self.c.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.current_state == state.value)
            .values(fence=jobs.c.fence + 1, last_progress_at=func.now(), next_attempt_at=None)
            .returning(jobs.c.fence)
        ).scalar()

    def _owned(self, job_id: UUID, state: State, fence: int) -> Any:
        return and_(jobs.c.job_id == job_id, jobs.c.current_state == state.value,
                    jobs.c.fence == fence)

    def heartbeat(self, job_id: UUID, state: State, fence: int) -> bool:
        return self.c.execute(
            update(jobs).where(self._owned(job_id, state, fence))
            .values(last_progress_at=func.now())).rowcount == 1

    def schedule_retry(self, job_id: UUID, state: State, fence: int, delay: float) -> bool:
        return self.c.execute(
            update(jobs).where(self._owned(job_id, state, fence))
            .values(retry_count=jobs.c.retry_count + 1, updated_at=func.now(),
                    last_progress_at=func.now(),
                    next_attempt_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, delay))
        ).rowcount == 1

    def attempt_counts(self, job_id: UUID, stage: str) -> AttemptCounts:
        se = stage_executions.c
        lost = (se.status == AttemptStatus.RUNNING.value) | (se.error_message == WORKER_LOST)
        failed = (se.status == AttemptStatus.FAILED.value) & (
            se.error_message.is_distinct_from(WORKER_LOST))
        row = self.c.execute(
            select(func.count(), func.count().filter(failed), func.count().filter(lost))
            .where(se.job_id == job_id, se.stage_name == stage)).one()
        return AttemptCounts(total=row[0], failed=row[1], lost=row[2])

    def open_attempt(self, job_id: UUID, state: State, task_id: str | None
                     ) -> OpenedAttempt | None:
        index = STAGE_STATES.index(state)
        row = self._driver(_OPEN_ATTEMPT, {
            "job_id": str(job_id), "state": state.value, "lost": WORKER_LOST,
            "first": index == 0, "task_id": task_id,
            "previous": STAGE_STATES[index - 1].value if index else None,
        })
        if row is None:
            return None
        fence, total, failed, lost, data, correlation_id, redriven_from, reusable = (
            row.values())
        return OpenedAttempt(fence=fence, before=AttemptCounts(total, failed, lost),
                             attempt=total + 1, input=data or {},
                             correlation_id=correlation_id,
                             redriven_from=_uuid(redriven_from),
                             reusable=reusable)

    def advance(self, job_id: UUID, state: State, to_state: State, reason: str, *,
                fence: int, attempt: int, output: dict[str, Any],
                fields: dict[str, Any] | None = None, reused_from: UUID | None = None
                ) -> Job | None:
        transition(state, to_state, job_id=str(job_id))  # refused in code first
        fields = fields or {}
        if not set(fields) <= _ADVANCE_FIELDS:
            raise ValueError(f"advance sets only {sorted(_ADVANCE_FIELDS)}, not {fields}")
        row = self._driver(_ADVANCE, {
            "job_id": str(job_id), "state": state.value, "to_state": to_state.value,
            "reason": reason, "fence": fence, "attempt": attempt,
            "terminal": to_state in TERMINAL, "output": json.dumps(output),
            "plan_reference": fields.get("plan_reference"),
            "result_reference": fields.get("result_reference"),
            "reused_from": str(reused_from) if reused_from else None,
        })
        if row is None:
            return None
        return _job({**row, "job_id": _uuid(row["job_id"]),
                     "redriven_from": _uuid(row["redriven_from"])})

    def running_attempt(self, job_id: UUID, stage: str, task_id: str
                        ) -> tuple[int, int, float] | None:
        """(attempt number, fence, seconds since it started) of the attempt ``task_id`` is
        running for ``stage``, if it is still open."""
        se = stage_executions.c
        row = self.c.execute(
            select(se.attempt_number, se.fence,
                   func.extract("epoch", func.clock_timestamp() - se.started_at))
            .where(se.job_id == job_id, se.stage_name == stage, se.celery_task_id == task_id,
                   se.status == AttemptStatus.RUNNING.value)).first()
        return (row[0], row[1], float(row[2])) if row else None

    def finish_attempt(self, job_id: UUID, stage: str, attempt: int, *, success: bool,
                       output: dict[str, Any] | None = None, error: str | None = None) -> bool:
        se = stage_executions.c
        status = AttemptStatus.SUCCESS if success else AttemptStatus.FAILED
        return self.c.execute(
            update(stage_executions)
            .where(se.job_id == job_id, se.stage_name == stage, se.attempt_number == attempt,
                   se.status == AttemptStatus.RUNNING.value)
            .values(status=status.value, completed_at=func.clock_timestamp(),
                    duration_ms=_ELAPSED_MS, output_data=output, error_message=error)
        ).rowcount == 1

    def close_running_attempts(self, job_id: UUID, error: str) -> list[str]:
        """Close every open attempt of the job; the Celery task ids that were running them."""
        return [t for t in self._close(stage_executions.c.job_id == job_id, error) if t]

    def _close(self, condition: Any, error: str) -> list[str | None]:
        se = stage_executions.c
        return list(self.c.execute(
            update(stage_executions)
            .where(condition, se.status == AttemptStatus.RUNNING.value)
            .values(status=AttemptStatus.FAILED.value, completed_at=func.clock_timestamp(),
                    duration_ms=_ELAPSED_MS, error_message=error)
            .returning(se.celery_task_id)).scalars())

    def _output(self, job_id: UUID, state: State) -> dict[str, Any] | None:
        se = stage_executions.c
        return self.c.execute(
            select(se.output_data).where(se.job_id == job_id, se.stage_name == state.value,
                                         se.status == AttemptStatus.SUCCESS.value)
        ).scalar()

    def detail(self, job_id: UUID) -> JobDetail | None:
        job = self.get(job_id)
        if job is None:
            return None
        t = job_transitions.c
        transitions = [
            Transition(State(r.from_state), State(r.to_state), r.at, r.reason)
            for r in self.c.execute(select(t.from_state, t.to_state, t.at, t.reason)
                                    .where(t.job_id == job_id).order_by(t.id))]
        se = stage_executions.c
        stages = [
            StageAttempt(r.stage_name, r.attempt_number, AttemptStatus(r.status), r.started_at,
                         r.completed_at, r.duration_ms, r.error_message, r.reused_from)
            for r in self.c.execute(
                select(se.stage_name, se.attempt_number, se.status, se.started_at,
                       se.completed_at, se.duration_ms, se.error_message, se.reused_from)
                .where(se.job_id == job_id).order_by(se.started_at, se.id))]
        redrives = list(self.c.execute(
            select(jobs.c.job_id).where(jobs.c.redriven_from == job_id)
            .order_by(jobs.c.created_at, jobs.c.job_id)).scalars())
        result = (self._output(job_id, State.COSTING)
                  if job.current_state is State.COMPLETED else None)
        return JobDetail(job, transitions, stages, result, redrives=redrives,
                         notification=self.notification(job_id))

    def list_jobs(self, state: State | None, limit: int,
                  after: tuple[datetime, UUID] | None) -> list[Job]:
        """Newest first; ``after`` is the (created_at, job_id) of the last job already seen."""
        query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
        if state is not None:
            query = query.where(jobs.c.current_state == state.value)
        if after is not None:
            query = query.where(tuple_(jobs.c.created_at, jobs.c.job_id) < tuple_(*after))
        return [_job(r) for r in self.c.execute(query.limit(limit)).mappings()]

    def stale_jobs(self, stale_after: float, limit: int) -> list[Job]:
        cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, stale_after)
        query = (
            select(jobs)
            .where(jobs.c.current_state.not_in([*_TERMINAL, State.UPLOADED.value]),
                   jobs.c.last_progress_at < cutoff,
                   jobs.c.next_attempt_at.is_(None) | (jobs.c.next_attempt_at < cutoff))
            .order_by(jobs.c.last_progress_at).limit(limit)
            .with_for_update(skip_locked=True))
        return [_job(r) for r in self.c.execute(query).mappings()]

    def mark_resumed(self, job_id: UUID) -> None:
        self.c.execute(update(jobs).where(jobs.c.job_id == job_id).values(
            last_progress_at=func.now(), next_attempt_at=None,
            resume_count=jobs.c.resume_count + 1))

    def unmark_resumed(self, job_id: UUID, state: State, fence: int) -> bool:
        """Undo :meth:`mark_resumed` for a job whose enqueue failed: the resume did not
        happen, and its last progress goes back to the epoch, before any cutoff, so the
        next pass takes it (first). Only while it is still in ``state`` with ``fence``: a
        job claimed or moved since has shown life of its own and is left alone."""
        return self.c.execute(
            update(jobs).where(self._owned(job_id, state, fence))
            .values(last_progress_at=func.to_timestamp(0),
                    resume_count=func.greatest(jobs.c.resume_count - 1, 0))
        ).rowcount == 1

    def ping(self) -> None:
        self.c.execute(select(literal_column("1")))

    # --- the outboxes (migration 0005, orchestrator.outbox) -------------------------------

    def enqueue_sent(self, job_id: UUID) -> None:
        self._driver(_ENQUEUE_SENT, {"job_id": str(job_id)})

    def claim_enqueues(self, limit: int, lease: float) -> list[PendingEnqueue]:
        rows = self.c.execute(_CLAIM_ENQUEUES, {"limit": limit, "lease": lease}).mappings()
        return [PendingEnqueue(job_id=r["job_id"], from_state=State(r["from_state"]),
                               correlation_id=r["correlation_id"], fence=r["fence"],
                               attempts=r["attempts"],
                               current_state=State(r["current_state"]),
                               current_fence=r["current_fence"])
                for r in sorted(rows, key=lambda r: r["created_at"])]

    def enqueue_failed(self, job_id: UUID, error: str, delay: float) -> None:
        self.c.execute(update(job_enqueues).where(job_enqueues.c.job_id == job_id)
                       .values(last_error=error, next_attempt_at=_in(delay)))

    def claim_events(self, limit: int, timeout: float) -> list[TerminalEvent]:
        rows = self.c.execute(_CLAIM_EVENTS, {"limit": limit, "timeout": timeout}).mappings()
        return [TerminalEvent(event_id=r["event_id"], job_id=r["job_id"], state=r["state"],
                              error_message=r["error_message"],
                              plan_reference=r["plan_reference"],
                              result_reference=r["result_reference"],
                              completed_at=r["completed_at"],
                              redriven_from=r["redriven_from"], attempts=r["attempts"],
                              correlation_id=r["correlation_id"])
                for r in sorted(rows, key=lambda r: r["n"])]

    def _pending_event(self, event_id: UUID) -> Any:
        return and_(job_events.c.event_id == event_id, job_events.c.status == "pending")

    def event_delivered(self, event_id: UUID) -> None:
        self.c.execute(update(job_events).where(self._pending_event(event_id)).values(
            status="delivered", delivered_at=func.now(), last_error=None))

    def event_failed(self, event_id: UUID, error: str, delay: float) -> None:
        self.c.execute(update(job_events).where(self._pending_event(event_id)).values(
            last_error=error, next_attempt_at=_in(delay)))

    def skip_events(self, limit: int, reason: str) -> list[tuple[UUID, UUID, str | None]]:
        return [(r[0], r[1], r[2]) for r in self.c.execute(
            _SKIP_EVENTS, {"limit": limit, "reason": reason})]

    def notification(self, job_id: UUID) -> Notification | None:
        e = job_events.c
        row = self.c.execute(
            select(e.event_id, e.status, e.attempts, e.last_error, e.delivered_at,
                   e.next_attempt_at).where(e.job_id == job_id)).first()
        if row is None:
            return None
        return Notification(row.event_id, row.status, row.attempts, row.last_error,
                            row.delivered_at,
                            row.next_attempt_at if row.status == "pending" else None)
