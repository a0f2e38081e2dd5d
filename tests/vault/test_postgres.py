"""What only PostgreSQL has (``rehost init --database``): the CLI life cycle, the password
rules, the migrations and column types, the time zone.

One throwaway PostgreSQL cluster per test run (``rehost.testkit.postgres``), a database per
test. Skipped, with the reason, where PostgreSQL or psycopg is not installed. The rules both
databases share (leases, job claims...) are tested once, in the test module of
their package, and run on PostgreSQL in its tier (``REHOST_TEST_DATABASE=postgresql``, see
tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from rehost.errors import UsageError
from rehost.jobs.models import JobRow
from rehost.jobs.runner import Step, create_job, get_job, plan
from rehost.testkit.postgres import Postgres
from rehost.vault.vault import DatabaseUnavailable, Vault
from tests.cli_helpers import rehost

GIB = 1 << 30

pytestmark = pytest.mark.main_run_only("PostgreSQL's own tests, on their own databases: they "
                                       "ran on PostgreSQL in the main run")


@pytest.fixture
def pg_url(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty database of this test's own; its password where libpq looks (PGPASSWORD)."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.delenv("REHOST_DATABASE_PASSWORD", raising=False)
    return postgres.create_database(f"t_{secrets.token_hex(6)}")


def _sparse_image(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


# ---- the CLI on PostgreSQL -------------------------------------------------------------------


def test_the_cli_life_cycle_on_postgresql(postgres: Postgres, pg_url: str, tmp_path: Path) -> None:
    """init --database, a 3 GiB disk (over PostgreSQL's 32-bit INTEGER), two cycles, points,
    jobs, health, check: all on PostgreSQL, nothing in a SQLite file."""
    v = tmp_path / "vault"
    env = postgres.env()
    disk = _sparse_image(tmp_path / "disk.img", 3 * GIB, {GIB: os.urandom(256 << 10)})
    assert "state in " + pg_url in rehost(v, "init", "--database", pg_url, env=env).out
    config = json.loads((v / "vault.json").read_text())
    assert config["state"] == pg_url and postgres.password not in (v / "vault.json").read_text()

    assert "raw 3.0 GiB" in rehost(v, "source", "add", "image", "web", str(disk), env=env).out
    rehost(v, "replicate", "web", env=env)
    _sparse_image_write(disk, 2 * GIB + 4096, os.urandom(64 << 10))
    rehost(v, "replicate", "web", env=env)

    points = rehost(v, "points", "web", "--json", env=env).json()
    assert len(points) == 2 and points[1]["consistency"] == "crash-consistent"
    jobs = rehost(v, "jobs", "--json", env=env).json()
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"]
    assert jobs[0]["steps"][-1]["total"] == 3 * GIB  # step progress past 2**31 bytes
    [machine] = rehost(v, "machines", "--json", env=env).json()
    assert machine["state"] == "protected" and machine["disks"][0]["size"] == 3 * GIB
    assert machine["health"]["status"] == "healthy"
    assert 0 <= machine["health"]["rpo_seconds"] < 120  # times stored and read back as UTC
    rehost(v, "check", env=env)

    assert not list(v.glob("*.db*"))  # the state is in PostgreSQL, not next to the repository
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"),
                           connect_args={"password": postgres.password})
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM machines").scalars().all() == ["web"]
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar() == 2
    engine.dispose()


def _sparse_image_write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_init_takes_the_url_and_password_from_the_environment(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.create_database(f"t_{secrets.token_hex(6)}")
    env = {"REHOST_DATABASE_URL": url, "REHOST_DATABASE_PASSWORD": postgres.password, "PGPASSWORD": ""}
    rehost(tmp_path / "v", "init", env=env)
    assert json.loads((tmp_path / "v" / "vault.json").read_text())["state"] == url
    assert rehost(tmp_path / "v", "machines", "--json", env=env).json() == []
    # without any password the open fails and says where the password comes from
    r = rehost(tmp_path / "v", "machines", env={"REHOST_DATABASE_PASSWORD": "", "PGPASSWORD": "wrong"},
               check=False)
    assert r.code != 0 and "password authentication failed" in r.err
    assert "PGPASSWORD, ~/.pgpass or REHOST_DATABASE_PASSWORD" in r.err


@pytest.mark.parametrize("with_password", [
    "postgresql://rehost:s3cret-pw@127.0.0.1:5432/db",
    "postgresql://rehost@127.0.0.1:5432/db?password=s3cret-pw",
])
def test_a_url_with_a_password_is_refused(with_password: str, tmp_path: Path) -> None:
    """vault.json is shared between hosts: the password never goes in it. (No server needed:
    the URL is refused before anything connects.)"""
    r = rehost(tmp_path / "v", "init", "--database", with_password, check=False)
    assert r.code == 2 and not (tmp_path / "v").exists()
    assert "must not contain a password" in r.err and "PGPASSWORD" in r.err and "~/.pgpass" in r.err
    assert "s3cret-pw" not in r.err + r.out
    with pytest.raises(UsageError, match="only PostgreSQL"):
        Vault.init(tmp_path / "w", database="mysql://u@h/db")


def test_init_refuses_a_database_that_holds_another_vault(pg_url: str, tmp_path: Path) -> None:
    Vault.init(tmp_path / "a", database=pg_url).close()
    with pytest.raises(UsageError, match="is not empty"):
        Vault.init(tmp_path / "b", database=pg_url)
    assert not (tmp_path / "b" / "vault.json").exists()
    Vault.open(tmp_path / "a").close()  # the first vault is untouched


def test_a_wrong_password_is_one_clear_error(pg_url: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    Vault.init(tmp_path / "v", database=pg_url).close()
    monkeypatch.setenv("PGPASSWORD", "not-it")
    with pytest.raises(DatabaseUnavailable, match="password authentication failed"):
        Vault.open(tmp_path / "v")


# ---- migrations and types ----------------------------------------------------------------------


def test_the_migrations_build_the_models_on_postgresql(postgres: Postgres, pg_url: str,
                                                       tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from rehost.vault import schema
    from rehost.vault.models import Base

    v = Vault.init(tmp_path / "v", database=pg_url)
    schema.upgrade(v.engine)  # idempotent, as every open runs it
    head = ScriptDirectory.from_config(schema.alembic_config(v.engine)).get_current_head()
    with v.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head
    v.close()
    # reflect with a plain engine (the vault's binds Integer as BIGINT, see schema.py)
    plain = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"),
                          connect_args={"password": postgres.password})
    with plain.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        kinds = {(d[0][0], d[0][5].__class__.__name__) if isinstance(d, list) else (d[0], "")
                 for d in diff}
        # the only difference: Integer columns are BIGINT on PostgreSQL (64-bit as on SQLite)
        assert kinds <= {("modify_type", "BIGINT")}, diff
        types = dict(conn.exec_driver_sql(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'").all())
    plain.dispose()
    assert types["disks.size"] == types["job_steps.total"] == "bigint"
    assert types["machines.spec"] == "json" and types["jobs.created_at"] == "timestamp without time zone"


def test_times_are_utc_whatever_the_server_zone(postgres: Postgres, pg_url: str, tmp_path: Path) -> None:
    """The DateTime columns hold naive UTC on both databases; a server (or database) in
    another zone must not shift them."""
    from psycopg import sql

    name = pg_url.rsplit("/", 1)[1]
    with postgres.admin() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'America/New_York'")
                     .format(sql.Identifier(name)))
    v = Vault.init(tmp_path / "v", database=pg_url)
    try:
        before = datetime.now(UTC).replace(tzinfo=None)
        job = create_job(v, "replicate-noop-test", None, "", {})
        created = get_job(v, job.id).created_at
        assert created.tzinfo is None and abs((created - before).total_seconds()) < 5
    finally:
        v.close()


@plan("replicate-noop-test")
def _noop_plan(vault: Vault, job: JobRow) -> list[Step]:
    return [Step("noop", "Nothing", lambda ctx: "ok")]
