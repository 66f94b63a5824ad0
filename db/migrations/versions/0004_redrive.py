"""Redrive: a FAILED job re-run under a new id, reusing the stage outputs that succeeded.

``jobs.redriven_from`` names the job a redrive came from (indexed, so the old job's detail
lists its redrives); ``stage_executions.reused_from`` marks an attempt that did not call
its service but took the old job's stored output. Deleting the old job (retention) keeps
its redrives and forgets where they came from (ON DELETE SET NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column(
        "redriven_from", UUID(as_uuid=True),
        sa.ForeignKey("jobs.job_id", ondelete="SET NULL", name="jobs_redriven_from_fkey")))
    op.create_index("jobs_redriven_from", "jobs", ["redriven_from"],
                    postgresql_where=sa.text("redriven_from IS NOT NULL"))
    op.add_column("stage_executions", sa.Column("reused_from", UUID(as_uuid=True)))


def downgrade() -> None:
    op.drop_column("stage_executions", "reused_from")
    op.drop_index("jobs_redriven_from", table_name="jobs")
    op.drop_column("jobs", "redriven_from")
