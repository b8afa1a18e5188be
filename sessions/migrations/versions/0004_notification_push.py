"""Sessions migration 0004, beside the request path: push delivery attempts on notifications.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:40:00
"""

import sqlalchemy as sa
from alembic import op

import sessions.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("retry_at", sessions.models.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("retry_at")
        batch_op.drop_column("attempts")
