"""the checks a failed-over machine must pass (TCP, HTTP, scripts): its verdict's definition

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("checks", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch copy of ``machines``
    # would drop the table that other tables' foreign keys point at
    op.drop_column("machines", "checks")
