"""Bringing a vault's database to the current schema with Alembic (ARCHITECTURE §4)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

import rehost.jobs.models  # noqa: F401  (registers the job tables on Base.metadata)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied; a no-op on an up-to-date vault."""
    cfg = alembic_config(engine)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def revision(engine: Engine, message: str) -> None:
    """Developer helper: autogenerate a migration from the models (python -m rehost.vault.schema MSG)."""
    cfg = alembic_config(engine)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    import sys
    import tempfile

    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as d:
        eng = create_engine(f"sqlite:///{d}/v.db")
        upgrade(eng)
        revision(eng, " ".join(sys.argv[1:]) or "schema change")
