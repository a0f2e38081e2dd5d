"""point records: a copy of each recovery point's header, and per machine its count and latest
points, so listings and scheduler ticks stop decoding manifests (design §6, "Point records")

Revision ID: 0006
Revises: 0005

The migration cannot read the repository (it may be encrypted, and Alembic has only the
database), so it leaves the records empty and marks every machine that exists ``dirty``: the
first reader rebuilds the records from the manifests, once, and clears the marks.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "point_records",
        sa.Column("point_id", sa.String(64), primary_key=True),
        sa.Column("machine_id", sa.String(64), nullable=False),
        sa.Column("time", sa.String(40), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("consistency", sa.String(32), nullable=False),
        sa.Column("replaces", sa.String(64), nullable=True),
        sa.Column("disks", sa.JSON(), nullable=False, server_default="[]"),
    )
    op.create_index("ix_point_records_machine_time", "point_records", ["machine_id", "time", "sequence"])
    op.create_table(
        "point_summaries",
        sa.Column("machine_id", sa.String(64), primary_key=True),
        sa.Column("points", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("latest_id", sa.String(64), nullable=True),
        sa.Column("latest_time", sa.String(40), nullable=True),
        sa.Column("latest_app_id", sa.String(64), nullable=True),
        sa.Column("latest_app_time", sa.String(40), nullable=True),
        sa.Column("dirty", sa.Integer(), nullable=False, server_default="0"),
    )
    # an upgraded vault: its machines may have points only the manifests know of
    op.execute("INSERT INTO point_summaries (machine_id, points, dirty) SELECT id, 0, 1 FROM machines")


def downgrade() -> None:
    op.drop_table("point_summaries")
    op.drop_index("ix_point_records_machine_time", table_name="point_records")
    op.drop_table("point_records")
