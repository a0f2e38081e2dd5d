"""Alembic environment: the engine comes from the vault that runs the upgrade."""

from __future__ import annotations

from alembic import context

from rehost.vault.models import Base

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
