"""The tables, as SQLAlchemy Core metadata (the migrations in ``db/migrations`` create them;
this module only describes them for queries)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("job_id", UUID(as_uuid=True), primary_key=True),
    Column("current_state", Text, nullable=False),
    Column("previous_state", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("retry_count", Integer, nullable=False),
    Column("error_message", Text),
    Column("plan_reference", Text),
    Column("result_reference", Text),
    Column("input", JSONB, nullable=False),
    Column("correlation_id", Text),
    # Fencing token: bumped by every claim of the job by a stage worker; every write of a
    # stage is conditioned on it, so a worker that lost its lock cannot write.
    Column("fence", BigInteger, nullable=False),
    # Last sign of life (claim, heartbeat, transition, resume) and the due time of a
    # scheduled retry: what recovery reads to tell a stalled job from a waiting one.
    Column("last_progress_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("resume_count", Integer, nullable=False),
    # Why the job entered its current state; the transition trigger copies it into history.
    Column("state_reason", Text),
    # The FAILED job this one redrives (migration 0004), if any.
    Column("redriven_from", UUID(as_uuid=True), ForeignKey("jobs.job_id", ondelete="SET NULL")),
)

stage_executions = Table(
    "stage_executions", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.job_id", ondelete="CASCADE"),
           nullable=False),
    Column("stage_name", Text, nullable=False),
    Column("attempt_number", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Column("duration_ms", Integer),
    Column("input_data", JSONB),
    Column("output_data", JSONB),
    Column("error_message", Text),
    Column("celery_task_id", Text),
    Column("fence", BigInteger),
    # The job whose stored output this SUCCESS reused instead of calling the service.
    Column("reused_from", UUID(as_uuid=True)),
    UniqueConstraint("job_id", "stage_name", "attempt_number"),
)

job_transitions = Table(
    "job_transitions", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.job_id", ondelete="CASCADE"),
           nullable=False),
    Column("from_state", Text, nullable=False),
    Column("to_state", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reason", Text),
)

# Jobs by state, kept exact by triggers on jobs (migration 0003): a state's count is the sum
# of its rows, one per shard.
job_state_counts = Table(
    "job_state_counts", metadata,
    Column("state", Text, nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    PrimaryKeyConstraint("state", "shard"),
)

# A job's terminal-event notification, written by a trigger on jobs in the transaction of
# the move to COMPLETED/FAILED (migration 0005) and delivered by the relay.
job_events = Table(
    "job_events", metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.job_id", ondelete="CASCADE"),
           nullable=False, unique=True),
    Column("state", Text, nullable=False),
    Column("error_message", Text),
    Column("plan_reference", Text),
    Column("result_reference", Text),
    Column("completed_at", DateTime(timezone=True)),
    Column("redriven_from", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),  # pending, delivered, skipped
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
)

# The chain a started job is owed (migration 0005): inserted with the start, deleted once
# sent; a row left unsent is sent by the relay.
job_enqueues = Table(
    "job_enqueues", metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.job_id", ondelete="CASCADE"),
           primary_key=True),
    Column("from_state", Text, nullable=False),
    Column("correlation_id", Text),
    Column("fence", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
)
