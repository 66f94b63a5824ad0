"""Retention: terminal jobs by completion time, for ``orchestrator jobs prune``.

A partial index on ``completed_at`` over the terminal jobs only, so each batch of a prune
finds the oldest ones without scanning the history (and a prune's cost follows what it
deletes, not the table's size). Built ``CONCURRENTLY``: upgrading a deployment with
millions of jobs does not block its writers meanwhile.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("jobs_terminal_completed", "jobs", ["completed_at"],
                        postgresql_where=sa.text("current_state IN ('COMPLETED', 'FAILED')"),
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("jobs_terminal_completed", table_name="jobs",
                      postgresql_concurrently=True, if_exists=True)
