"""per-machine leases, job claiming, the machine's discovered spec, source kind 'physical'

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("resource", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False, server_default=""),
        sa.Column("machine_id", sa.String(32), nullable=True),
        sa.Column("job_id", sa.String(16), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False, server_default="{}"),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("holder", sa.String(200), nullable=True))
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=False, server_default="{}"))
    op.execute("UPDATE sources SET kind = 'physical' WHERE kind = 'agent'")


def downgrade() -> None:
    op.execute("UPDATE sources SET kind = 'agent' WHERE kind = 'physical'")
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("spec")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("holder")
    op.drop_table("leases")
