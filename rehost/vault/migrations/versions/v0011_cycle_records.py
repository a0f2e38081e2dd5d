"""per-cycle history: ``cycle_records`` (the item page's RPO, bytes and duration charts)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cycle_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("machine_id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("changed_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("point_id", sa.String(64), nullable=True),
        sa.Column("point_time", sa.String(40), nullable=True),
        sa.Column("consistency", sa.String(32), nullable=False),
        sa.Column("error", sa.String(500), nullable=False),
    )
    op.create_index("ix_cycle_records_machine_time", "cycle_records", ["machine_id", "time"])


def downgrade() -> None:
    op.drop_index("ix_cycle_records_machine_time", "cycle_records")
    op.drop_table("cycle_records")
