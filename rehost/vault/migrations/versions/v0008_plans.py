"""recovery plans: ``plans`` (name, per-group actions) and ``plan_machines`` (each machine's
group in at most one plan)

Revision ID: 0008
Revises: 0007

New tables only: existing vaults have no plans.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "plan_machines",
        sa.Column("machine_id", sa.String(32), sa.ForeignKey("machines.id"), primary_key=True),
        sa.Column("plan_id", sa.String(32), sa.ForeignKey("plans.id"), nullable=False),
        sa.Column("group", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("plan_machines")
    op.drop_table("plans")
