"""Transactional outboxes: a job's terminal-event notification, and the enqueue of a
started job's chain.

``job_events``: one row per job that reached COMPLETED or FAILED, inserted by a trigger
on ``jobs`` in the very transaction of the terminal move, whoever writes it (the runner's
advance to COMPLETED, its give-up to FAILED, an operator's fail, any future writer): no
writer can forget the event, and no event exists for a move that rolled back. The row
snapshots what the notification says (state, error, references, completion time,
``redriven_from``), so every delivery of it sends the same bytes under the same
``event_id``. ``UNIQUE (job_id)``: a job ends once, so one event per job, whatever
happens. The relay (:mod:`tasks.relay`) delivers it and records the outcome on the row:
``status`` pending → delivered (a 2xx), or skipped (no ``NOTIFY_URL`` configured when it
came due); ``attempts``, ``last_error`` and ``next_attempt_at`` (the backoff, and the lease
of a delivery in flight) in between. A partial index on the pending rows keeps the
relay's pick and the ``/metrics`` backlog gauge O(backlog).

``job_enqueues``: the promise of a 202. The start's transaction inserts the row with the
move UPLOADED → PLANNING; the API sends the chain right after its commit and deletes the
row; a row still there ``OUTBOX_ENQUEUE_AFTER`` seconds later (the broker was down, the
API died between commit and send) is sent by a worker's relay. Both tables cascade with
their job (retention deletes terminal jobs with their events).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TRIGGER = """
CREATE FUNCTION jobs_record_terminal_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_events (job_id, state, error_message, plan_reference, result_reference,
                            completed_at, redriven_from)
    VALUES (NEW.job_id, NEW.current_state, NEW.error_message, NEW.plan_reference,
            NEW.result_reference, NEW.completed_at, NEW.redriven_from)
    ON CONFLICT (job_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_record_terminal_event AFTER UPDATE OF current_state ON jobs
    FOR EACH ROW WHEN (OLD.current_state IS DISTINCT FROM NEW.current_state
                       AND NEW.current_state IN ('COMPLETED', 'FAILED'))
    EXECUTE FUNCTION jobs_record_terminal_event();
"""


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("job_id", UUID(as_uuid=True),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text),
        sa.Column("plan_reference", sa.Text),
        sa.Column("result_reference", sa.Text),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("redriven_from", UUID(as_uuid=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("job_id", name="job_events_one_per_job"),
        sa.CheckConstraint("state IN ('COMPLETED', 'FAILED')", name="job_events_terminal"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'skipped')",
                           name="job_events_status_valid"),
    )
    op.create_index("job_events_pending", "job_events", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_table(
        "job_enqueues",
        sa.Column("job_id", UUID(as_uuid=True),
                  sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.Text),
        # The job's fence when the row was written: a claim since (a stage got the chain)
        # makes the row obsolete.
        sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("job_enqueues_due", "job_enqueues", ["next_attempt_at"])
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_record_terminal_event ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_record_terminal_event()")
    op.drop_table("job_enqueues")
    op.drop_table("job_events")
