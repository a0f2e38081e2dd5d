"""The vault's state in PostgreSQL (``rehost init --database``): the CLI life cycle, the
password rules, the migrations, and the leases — exclusive, re-entrant, stale takeover,
prune against writers, job claims — with processes racing for the same lease.

One throwaway PostgreSQL cluster per test run (``rehost.testkit.postgres``), a database per
test. The lease properties run on SQLite too (the ``vault`` fixture is parametrized), so the
two databases are held to the same rules. Skipped, with the reason, where PostgreSQL or
psycopg is not installed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, update

from rehost.errors import InvalidState, UsageError
from rehost.jobs import leases
from rehost.jobs.models import JobRow, LeaseRow
from rehost.jobs.runner import Step, StepContext, create_job, get_job, plan, run_job
from rehost.testkit.postgres import Postgres
from rehost.vault.vault import DatabaseUnavailable, Vault
from tests.cli_helpers import rehost

RACE_ROUNDS = 40
RACERS = 4
GIB = 1 << 30


@pytest.fixture
def pg_url(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty database of this test's own; its password where libpq looks (PGPASSWORD)."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.delenv("REHOST_DATABASE_PASSWORD", raising=False)
    return postgres.create_database(f"t_{secrets.token_hex(6)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vault]:
    """A vault on each database: the lease rules must hold on both."""
    database = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    v = Vault.init(tmp_path / "v", database=database)
    yield v
    v.close()


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


# ---- leases: the properties of tests/jobs/test_leases.py, on both databases --------------------


def test_a_machine_is_held_once_reentrant_in_its_thread(vault: Vault) -> None:
    with leases.machine(vault, "m1", "web", "failover", job_id="abc123"):
        with leases.machine(vault, "m1", "web", "replicate"):  # same thread: re-entrant
            pass
        errors: list[str] = []

        def other() -> None:
            try:
                with leases.machine(vault, "m1", "web", "replicate"):
                    pass
            except InvalidState as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and errors[0].startswith("web is busy: failover (job abc123)"), errors
        with leases.machine(vault, "m2", "db", "replicate"):  # another machine is not affected
            pass
    with leases.machine(vault, "m1", "web", "replicate"):  # released
        pass


def test_a_stale_lease_is_taken_over_once(vault: Vault) -> None:
    got = leases.try_acquire(vault, "machine:x", "replicate")
    assert isinstance(got, leases.Lease)
    leases._keeper.forget(got)  # its holder stops renewing (a hung or partitioned runner)
    assert isinstance(leases.try_acquire(vault, "machine:x", "replicate"), LeaseRow)
    with vault.session() as s, s.begin():
        s.execute(update(LeaseRow).values(expires_at=time.time() - 1))
    again = leases.try_acquire(vault, "machine:x", "failover")
    assert isinstance(again, leases.Lease) and again.holder != got.holder
    assert isinstance(leases.try_acquire(vault, "machine:x", "replicate"), LeaseRow)  # held again
    got.release()  # the old holder's release does not drop the new holder's lease
    assert leases.holders(vault, "machine:x")[0].holder == again.holder
    again.release()
    assert leases.holders(vault, "machine:x") == []


def test_a_holder_that_renewed_keeps_its_lease(vault: Vault) -> None:
    """The takeover is a compare-and-swap on holder *and* expiry: a taker that read the lease
    as expired, and lost the race to the holder's renewal, does not steal it."""
    got = leases.try_acquire(vault, "machine:r", "replicate")
    assert isinstance(got, leases.Lease)
    with vault.session() as s, s.begin():
        s.execute(update(LeaseRow).values(expires_at=time.time() - 1))
    with vault.session() as s:
        seen = s.get(LeaseRow, "machine:r")
    assert seen is not None
    with vault.session() as s, s.begin():  # the holder's keeper renews it now
        s.execute(update(LeaseRow).values(expires_at=time.time() + leases.TTL_S))
    with vault.session() as s, s.begin():  # the taker's swap, with what it had read
        swapped = s.connection().execute(
            update(LeaseRow).where(LeaseRow.resource == "machine:r", LeaseRow.holder == seen.holder,
                                   LeaseRow.expires_at == seen.expires_at).values(holder="thief"))
    assert swapped.rowcount == 0
    assert leases.holders(vault, "machine:r")[0].holder == got.holder
    got.release()


def test_prune_waits_for_writers_and_writers_wait_for_prune(vault: Vault) -> None:
    order: list[str] = []
    with leases.writing(vault, "replicate"):
        def prune() -> None:
            with leases.pruning(vault, timeout=30):
                order.append("prune")
                time.sleep(0.5)  # a writer that arrives now must wait
                order.append("prune done")

        t = threading.Thread(target=prune)
        t.start()
        time.sleep(0.5)
        assert order == []  # the running cycle holds prune off
        order.append("cycle done")
    deadline = time.monotonic() + 10
    while "prune" not in order:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with leases.writing(vault, "replicate", timeout=30):
        order.append("next cycle")
    t.join()
    assert order == ["cycle done", "prune", "prune done", "next cycle"]
    with leases.reading(vault, ["p1"]), leases.reading(vault, ["p2", "p3"]):
        assert leases.points_being_read(vault) == {"p1", "p2", "p3"}


# ---- processes racing --------------------------------------------------------------------------


def _race_worker(root: str, rounds: int, barrier: Any, results: Any) -> None:
    """One racing process: its own vault connection; each round it waits for the others,
    then tries the round's lease once, and reports whether it won."""
    vault = Vault.open(Path(root))
    try:
        for r in range(rounds):
            for kind in ("fresh", "stale"):
                barrier.wait()
                got = leases.try_acquire(vault, f"machine:{kind}-{r}", "replicate")
                won = isinstance(got, leases.Lease)
                results.put((kind, r, os.getpid(), got.holder if won else None))
        barrier.wait()  # winners keep their leases until every racer is done
    finally:
        vault.close()


def test_processes_racing_for_a_lease_exactly_one_wins(vault: Vault) -> None:
    """Every round: RACERS processes try the same free lease at the same moment, then the
    same stale one (its holder expired); exactly one wins each, every time."""
    with vault.session() as s, s.begin():  # the stale leases: a holder that stopped renewing
        for r in range(RACE_ROUNDS):
            s.execute(insert(LeaseRow).values(resource=f"machine:stale-{r}", holder="gone:1:x",
                                              operation="replicate", detail={}, acquired_at=0.0,
                                              expires_at=time.time() - 60))
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(vault.root), RACE_ROUNDS, barrier, results))
             for _ in range(RACERS)]
    started = time.monotonic()
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(RACERS * RACE_ROUNDS * 2)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    elapsed = time.monotonic() - started
    winners: dict[tuple[str, int], list[str]] = {}
    for kind, r, _pid, holder in outcomes:
        winners.setdefault((kind, r), [])
        if holder:
            winners[(kind, r)].append(holder)
    assert len(winners) == 2 * RACE_ROUNDS
    bad = {k: w for k, w in winners.items() if len(w) != 1}
    assert not bad, f"rounds without exactly one winner: {bad}"
    print(f"\n{vault.engine.dialect.name}: {2 * RACE_ROUNDS} rounds of {RACERS} processes "
          f"in {elapsed:.1f}s, one winner each")


_RUNS = "REHOST_TEST_CLAIM_RUNS"


@plan("claim-race-test")
def _claim_plan(vault: Vault, job: JobRow) -> list[Step]:
    def step(ctx: StepContext) -> str:
        with open(os.environ[_RUNS], "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other runner to arrive while this one holds it
        return "ran"

    return [Step("only", "Only step", step)]


def _claim_worker(root: str, job_id: str, barrier: Any, results: Any) -> None:
    vault = Vault.open(Path(root))
    try:
        barrier.wait()
        try:
            results.put(run_job(vault, job_id).state)
        except InvalidState as e:
            results.put(f"refused: {e}")
    finally:
        vault.close()


def test_two_runners_claim_a_job_once(vault: Vault, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv(_RUNS, str(runs))
    job_id = create_job(vault, "claim-race-test", None, "", {}).id
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(str(vault.root), job_id, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert got[0].startswith("refused: job") and got[1] == "succeeded", got
    assert len(runs.read_text().splitlines()) == 1  # the step ran once
    assert get_job(vault, job_id).state == "succeeded"
