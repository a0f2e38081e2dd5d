"""agent heartbeat on machines, bandwidth schedule on policies

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("heartbeat", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("policies") as batch:
        batch.add_column(sa.Column("bandwidth_schedule", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("bandwidth_schedule")
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("heartbeat")
