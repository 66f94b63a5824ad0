"""Initial schema: jobs, stage_executions, job_transitions, and the state guard.

The database itself refuses an invalid state (CHECK) and an invalid transition (trigger),
and records every state change in the append-only ``job_transitions`` (trigger), so no
writer, however buggy, can store a move the state machine forbids or hide one.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("UPLOADED", "PLANNING", "PARSING", "ENRICHING", "COSTING", "COMPLETED", "FAILED")
STAGES = ("PLANNING", "PARSING", "ENRICHING", "COSTING")
_states = ", ".join(f"'{s}'" for s in STATES)
_stages = ", ".join(f"'{s}'" for s in STAGES)

GUARD = """
CREATE FUNCTION jobs_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.current_state <> 'UPLOADED' OR NEW.previous_state IS NOT NULL THEN
            RAISE EXCEPTION 'a job is created in UPLOADED, not %', NEW.current_state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.current_state IS DISTINCT FROM OLD.current_state THEN
        IF NOT (
            (OLD.current_state, NEW.current_state) IN (
                ('UPLOADED', 'PLANNING'), ('PLANNING', 'PARSING'), ('PARSING', 'ENRICHING'),
                ('ENRICHING', 'COSTING'), ('COSTING', 'COMPLETED'))
            OR (NEW.current_state = 'FAILED'
                AND OLD.current_state NOT IN ('COMPLETED', 'FAILED'))
        ) THEN
            RAISE EXCEPTION 'invalid transition % -> % for job %',
                OLD.current_state, NEW.current_state, OLD.job_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.previous_state IS DISTINCT FROM OLD.current_state THEN
            RAISE EXCEPTION 'previous_state must be % after leaving it', OLD.current_state
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.previous_state IS DISTINCT FROM OLD.previous_state THEN
        RAISE EXCEPTION 'previous_state changes only with current_state'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_state_guard BEFORE INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_state_guard();

CREATE FUNCTION jobs_record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_transitions (job_id, from_state, to_state, at, reason)
    VALUES (NEW.job_id, OLD.current_state, NEW.current_state, NEW.updated_at, NEW.state_reason);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_record_transition AFTER UPDATE OF current_state ON jobs
    FOR EACH ROW WHEN (OLD.current_state IS DISTINCT FROM NEW.current_state)
    EXECUTE FUNCTION jobs_record_transition();

CREATE FUNCTION job_transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job_transitions is append-only' USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER job_transitions_append_only BEFORE UPDATE ON job_transitions
    FOR EACH ROW EXECUTE FUNCTION job_transitions_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("current_state", sa.Text, nullable=False),
        sa.Column("previous_state", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text),
        sa.Column("plan_reference", sa.Text),
        sa.Column("result_reference", sa.Text),
        sa.Column("input", JSONB, nullable=False, server_default="{}"),
        sa.Column("correlation_id", sa.Text),
        sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_progress_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("resume_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state_reason", sa.Text),
        sa.CheckConstraint(f"current_state IN ({_states})", name="jobs_current_state_valid"),
        sa.CheckConstraint(f"previous_state IS NULL OR previous_state IN ({_states})",
                           name="jobs_previous_state_valid"),
        sa.CheckConstraint("retry_count >= 0", name="jobs_retry_count_non_negative"),
    )
    op.create_index("jobs_created_desc", "jobs", [sa.text("created_at DESC"),
                                                  sa.text("job_id DESC")])
    op.create_index("jobs_state_created_desc", "jobs",
                    ["current_state", sa.text("created_at DESC"), sa.text("job_id DESC")])
    op.create_index("jobs_active_progress", "jobs", ["last_progress_at"],
                    postgresql_where=sa.text("current_state NOT IN ('COMPLETED', 'FAILED')"))
    op.create_table(
        "stage_executions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", UUID(as_uuid=True),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage_name", sa.Text, nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("duration_ms", sa.Integer),
        sa.Column("input_data", JSONB),
        sa.Column("output_data", JSONB),
        sa.Column("error_message", sa.Text),
        sa.UniqueConstraint("job_id", "stage_name", "attempt_number",
                            name="stage_executions_one_row_per_attempt"),
        sa.CheckConstraint(f"stage_name IN ({_stages})", name="stage_executions_stage_valid"),
        sa.CheckConstraint("status IN ('RUNNING', 'SUCCESS', 'FAILED')",
                           name="stage_executions_status_valid"),
        sa.CheckConstraint("attempt_number >= 1", name="stage_executions_attempt_positive"),
    )
    # At most one successful attempt per stage of a job, whatever the writers do.
    op.create_index("stage_executions_one_success", "stage_executions",
                    ["job_id", "stage_name"], unique=True,
                    postgresql_where=sa.text("status = 'SUCCESS'"))
    op.create_table(
        "job_transitions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", UUID(as_uuid=True),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_index("job_transitions_job", "job_transitions", ["job_id", "id"])
    op.execute(GUARD)


def downgrade() -> None:
    op.drop_table("job_transitions")
    op.drop_table("stage_executions")
    op.drop_table("jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_state_guard() CASCADE")
    op.execute("DROP FUNCTION IF EXISTS jobs_record_transition() CASCADE")
    op.execute("DROP FUNCTION IF EXISTS job_transitions_append_only() CASCADE")
