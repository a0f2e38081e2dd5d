"""agent CA in the database: the agents' certificate authority (keys sealed, certificates,
passphrases, enrolled machines, revocations) moves from ``<vault>/agents`` into ``agent_ca``,
so every host and worker of a fleet uses one CA

Revision ID: 0007
Revises: 0006

The migration has only the database (the keys must be sealed with the repository's keys), so
it creates the table; the first process that needs the CA imports a vault's old files
(``rehost.vault.agent_ca``) and removes the CA key and state from the folder.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_ca",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("agent_ca")
