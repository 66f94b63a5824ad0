"""Record who runs each attempt: the Celery task id (so an operator's fail can revoke it)
and the fence it claimed the job with (so a hard time limit, handled outside the killed
process, can close exactly that attempt and nothing newer).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stage_executions", sa.Column("celery_task_id", sa.Text))
    op.add_column("stage_executions", sa.Column("fence", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("stage_executions", "fence")
    op.drop_column("stage_executions", "celery_task_id")
