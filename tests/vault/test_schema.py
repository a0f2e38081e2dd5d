"""The migrations build exactly the schema the models describe: a model change without a
migration fails here (run ``python -m rehost.vault.schema "what changed"`` to make one)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from rehost.vault import schema
from rehost.vault.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/v.db")
    schema.upgrade(engine)
    schema.upgrade(engine)  # idempotent: a second open changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
