"""Bringing a vault's database to the current schema with Alembic (ARCHITECTURE §4).

The same migrations run on SQLite (the embedded default) and PostgreSQL (a fleet's shared
state). Two things differ on PostgreSQL and are handled here rather than in every migration:
- ``Integer`` is 32-bit there (SQLite's is 64-bit), and the vault keeps byte counts in
  Integer columns (disk sizes and offsets, step progress): see ``bigint_on_postgresql``;
- many processes on many hosts open the vault at once, and each runs ``upgrade``: on
  PostgreSQL DDL is transactional, and an advisory lock makes the upgrades queue, so a new
  migration is applied once and the others find it done.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, Integer, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles

if TYPE_CHECKING:
    from alembic.config import Config

import rehost.jobs.models  # noqa: F401  (registers the job tables on Base.metadata)

MIGRATIONS = Path(__file__).parent / "migrations"
#: the newest migration's revision: a vault already there opens without loading Alembic
#: (~85 ms of every command); tests/vault/test_schema_head.py keeps it equal to Alembic's head
HEAD = "0011"
#: the advisory lock key that serializes schema upgrades of one PostgreSQL database ("rehost")
UPGRADE_LOCK = 0x7265686F7374
_bigint_lock = threading.Lock()
_bigint_done = False


def bigint_on_postgresql(engine: Engine) -> None:
    """Make plain ``Integer`` 64-bit on a PostgreSQL engine, as it is on SQLite.

    Why: rehost stores byte counts in ``Integer`` columns (``disks.size``, ``offset``,
    ``length``, ``job_steps.done``/``total``, ``policies.bandwidth_bps``). SQLite's INTEGER
    holds 64 bits; PostgreSQL's holds 32, so a disk over 2 GiB would fail to register
    ("integer out of range"). Two things change, both for PostgreSQL only:
    - DDL: an Integer *column* is created as BIGINT, so the same migrations build 64-bit
      columns (autoincrement keys stay SERIAL, which SQLAlchemy renders itself; casts in
      queries keep INTEGER: SQLAlchemy's own catalog queries depend on it);
    - binds on this engine: psycopg's dialect casts every parameter to its column's type
      (``%(size)s::INTEGER``), which would overflow before the value reached the column; this
      engine's dialect binds Integer as BIGINT instead.
    The lasting fix is ``BigInteger`` in the models with a migration; this is harmless once
    that exists. (Schema reflection of integer-keyed catalog queries on this engine is not
    needed at run time; compare schemas with a plain engine.)
    """
    global _bigint_done
    with _bigint_lock:
        if not _bigint_done:

            @compiles(Integer, "postgresql")
            def _bigint(element: Integer, compiler: Any, **kw: Any) -> str:
                if isinstance(kw.get("type_expression"), Column):
                    return "BIGINT"
                return str(compiler.visit_integer(element, **kw))

            _bigint_done = True
    dialect = engine.dialect
    if dialect.name == "postgresql":
        big = dialect.colspecs.get(BigInteger, BigInteger)
        dialect.colspecs = {**dialect.colspecs, Integer: big}  # this engine's dialect only


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied; a no-op on an up-to-date vault.

    One transaction: on PostgreSQL it first takes a transaction-level advisory lock, so
    processes that open the vault together upgrade one after the other (SQLite's
    ``BEGIN IMMEDIATE`` does the same there).
    A vault whose recorded revision is ``HEAD`` is left alone without loading Alembic.
    """
    if current(engine) == HEAD:
        return
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            bigint_on_postgresql(engine)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def current(engine: Engine) -> str | None:
    """The revision the database records (None: a new database, or one Alembic never ran on)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return None  # no alembic_version table yet
    return str(rows[0][0]) if len(rows) == 1 else None


def revision(engine: Engine, message: str) -> None:
    """Developer helper: autogenerate a migration from the models (python -m rehost.vault.schema MSG)."""
    from alembic import command

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
