"""Point records: the database's copy of the repository's points (design §6, "Point records").

The manifests stay the truth; these tests hold the records to them after cycles, prune,
retention and complete, after a crash between a manifest and its record, after an upgrade
from a vault without records, and with two processes replicating at once. And the point of
it all: listings, health and scheduler ticks decode no manifest and list no point.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, select

from rehost.jobs.runner import run_job
from rehost.replication.retention import RetentionPolicy
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind
from rehost.testkit.postgres import Postgres
from rehost.vault import failover, inventory, overview, point_records, policies, protection, schema
from rehost.vault.models import PointRecordRow, PointSummaryRow
from rehost.vault.point_records import PointRecord, PointSummary
from rehost.vault.scheduler import Scheduler
from rehost.vault.vault import Vault
from tests.api.portal import make_vault, portal_for
from tests.cli_helpers import REPO
from tests.targets.helpers import world

MiB = 1 << 20


def _disk(tmp_path: Path, name: str) -> Path:
    disk = tmp_path / f"{name}.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * MiB)
    return disk


def _change(disk: Path) -> None:
    with open(disk, "r+b") as f:
        f.seek(int.from_bytes(os.urandom(2), "little") % 48 * 64 * 1024)
        f.write(os.urandom(64 * 1024))


def _machines(vault: Vault, tmp_path: Path, names: tuple[str, ...], cycles: int) -> dict[str, Path]:
    disks = {}
    for name in names:
        disks[name] = _disk(tmp_path, name)
        inventory.add_image_source(vault, name, [disks[name]])
    for _ in range(cycles):
        for name in names:
            _change(disks[name])
            protection.replicate(vault, name)
    return disks


def _assert_true(vault: Vault) -> None:
    """The records and summaries say exactly what the manifests say, and no mark is left."""
    manifests = vault.repo.list_points()  # every manifest decoded: the truth
    assert sorted(point_records.records(vault), key=lambda r: r.id) == sorted(
        (PointRecord.of(p) for p in manifests), key=lambda r: r.id)
    by_machine: dict[str, list[RecoveryPoint]] = {}
    for p in manifests:
        by_machine.setdefault(p.machine, []).append(p)
    with vault.session() as s:
        rows = {r.machine_id: r for r in s.scalars(select(PointSummaryRow))}
    assert {m for m, r in rows.items() if r.dirty} == set()
    assert set(by_machine) <= set(rows)
    for machine_id, row in rows.items():
        got = PointSummary(row.points, row.latest_id, row.latest_time, row.latest_app_id, row.latest_app_time)
        assert got == PointSummary.of(by_machine.get(machine_id, [])), machine_id


def _extra_point(vault: Vault, like: RecoveryPoint, consistency: Consistency,
                 later_s: float) -> RecoveryPoint:
    """A real manifest through the repository's own API: ``like``'s disks at a later time."""
    when = datetime.strptime(like.time, "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(seconds=later_s)
    return vault.repo.save_point(replace(like, time=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), id="",
                                         consistency=consistency, sequence=like.sequence + 1,
                                         parent=like.id))


@pytest.fixture(params=["sqlite", "postgresql"])
def vault(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vault]:
    """A vault on each database: the row locks and ON CONFLICT statements differ."""
    database = None
    if request.param == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        monkeypatch.setenv("PGPASSWORD", pg.password)  # child processes find it too
        monkeypatch.delenv("REHOST_DATABASE_PASSWORD", raising=False)
        database = pg.create_database(f"t_{secrets.token_hex(6)}")
    v = Vault.init(tmp_path / "v", database=database)
    try:
        yield v
    finally:
        v.close()


class Spy:
    """Counts what reads manifests or lists them: decoding a point, listing points, and the
    storage listing of the points folder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, vault: Vault | None = None) -> None:
        self.calls: list[str] = []
        for name in ("load_point_exact", "list_points"):
            self._wrap(monkeypatch, Repository, name)
        if vault is not None:
            storage = vault.repo.storage
            original = storage.list

            def listing(kind: Kind) -> Any:
                if kind == Kind.POINTS:
                    self.calls.append("storage.list(points)")
                return original(kind)

            monkeypatch.setattr(storage, "list", listing)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def spy(*args: Any, **kw: Any) -> Any:
            self.calls.append(name)
            return original(*args, **kw)

        monkeypatch.setattr(cls, name, spy)


# -- the records follow the repository -------------------------------------------------------------


def test_records_follow_cycles_prune_and_retention(vault: Vault, tmp_path: Path) -> None:
    disks = _machines(vault, tmp_path, ("a", "b"), cycles=3)
    _assert_true(vault)
    a = inventory.get_machine(vault, "a")
    assert point_records.summaries(vault)[a.id].points == 3

    # prune keeps only the newest: its base goes, so it is rewritten as a full point
    later = datetime.now(UTC) + timedelta(days=1)
    report = protection.prune_vault(vault, RetentionPolicy(window=timedelta(hours=1),
                                                           all_for=timedelta(minutes=10),
                                                           hourly_for=timedelta(minutes=30)), later)
    assert report.points_rewritten == 2 and report.points_removed == 6
    _assert_true(vault)
    assert all(r.replaces for r in point_records.records(vault))
    assert point_records.summaries(vault)[a.id].points == 1

    # retention by the scheduler, with the machines under a policy
    for name in ("a", "b"):
        for _ in range(2):
            _change(disks[name])
            protection.replicate(vault, name)
    policies.create_policy(vault, "short", rpo_threshold="1h", retention="2h")
    for name in ("a", "b"):
        policies.attach(vault, name, "short")
    log: list[str] = []
    three_days_on = time.time() + 3 * 24 * 3600
    sched = Scheduler(vault, clock=lambda: three_days_on, log=log.append)
    sched._retention([(m, m.policy) for m in inventory.list_machines(vault)], wait=True)  # type: ignore[misc]
    sched.close()
    assert sum("retention removed 2 point(s)" in line for line in log) == 2, log
    _assert_true(vault)
    assert {s.points for s in point_records.summaries(vault).values()} == {1}


def test_complete_leaves_no_record_behind(tmp_path: Path) -> None:
    with world(tmp_path, "memory") as w:
        _assert_true(w.vault)
        assert _job(w.vault, "failover", shutdown_source=True) == "succeeded"
        assert _job(w.vault, "complete") == "succeeded"
        # complete settled the records of what it purged itself: no reader has to
        with w.vault.session() as s:
            row = s.get(PointSummaryRow, inventory.get_machine(w.vault, "web").id)
        assert row is not None and row.points == 0 and row.dirty == 0 and row.latest_id is None
        # complete prunes the repository itself; the item list sees the machine completed and
        # its records saying otherwise, and checks them against the repository
        [item] = overview.machine_views(w.vault)
        assert item["state"] == "migration_completed" and item["points"] == 0
        assert item["latest_point"] is None
        _assert_true(w.vault)
        assert protection.list_points(w.vault, "web") == []


def _job(vault: Vault, kind: str, **params: object) -> str:
    return run_job(vault, failover.start_job(vault, kind, "web", **params).id).state


# -- crashes and upgrades heal ---------------------------------------------------------------------


def test_a_crash_between_manifest_and_record_heals_on_the_next_read(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks = _machines(vault, tmp_path, ("a", "b"), cycles=1)
    a = inventory.get_machine(vault, "a")

    class Killed(BaseException):
        pass

    def die(*_args: Any, **_kw: Any) -> None:
        raise Killed  # the manifest is stored; the process dies before its record

    with monkeypatch.context() as m:
        m.setattr(point_records, "record", die)
        _change(disks["a"])
        with pytest.raises(Killed):
            protection.replicate(vault, "a")
    with vault.session() as s:
        row = s.get(PointSummaryRow, a.id)
        assert row is not None and row.dirty == 1 and row.points == 1  # the mark outlived the cycle
    lost = next(p for p in vault.repo.list_points(a.id) if p.id != row.latest_id)

    item = next(i for i in overview.machine_views(vault) if i["name"] == "a")  # any listing heals
    assert item["points"] == 2 and item["latest_point"] == lost.id
    _assert_true(vault)

    # a cycle that fails after its manifest (not killed) settles its records before it ends
    def fail(*_args: Any, **_kw: Any) -> None:
        raise RuntimeError("database went away")

    with monkeypatch.context() as m:
        m.setattr(point_records, "record", fail)
        _change(disks["a"])
        with pytest.raises(RuntimeError):
            protection.replicate(vault, "a")
    _assert_true(vault)
    assert point_records.summaries(vault)[a.id].points == 3

    # the same loss with no mark (a record row deleted by hand): a read of the machine heals it
    _change(disks["a"])
    newest = protection.replicate(vault, "a").point
    with vault.session() as s, s.begin():
        s.execute(delete(PointRecordRow).where(PointRecordRow.point_id == newest.id))
    assert [p.id for p in protection.point_list(vault, "a")][-1] == newest.id
    _assert_true(vault)
    with vault.session() as s, s.begin():
        s.execute(delete(PointRecordRow).where(PointRecordRow.point_id == newest.id))
    assert protection.find_point(vault, "a", "latest").id == newest.id
    _assert_true(vault)

    # and a cycle never takes an older parent for lack of a record
    with vault.session() as s, s.begin():
        s.execute(delete(PointRecordRow).where(PointRecordRow.machine_id == a.id))
        s.execute(delete(PointSummaryRow).where(PointSummaryRow.machine_id == a.id))
    _change(disks["a"])
    after = protection.replicate(vault, "a").point
    assert after.parent == newest.id and after.sequence == newest.sequence + 1
    _assert_true(vault)

    # rehost check brings the records in line too, and says so
    with vault.session() as s, s.begin():
        s.execute(delete(PointRecordRow).where(PointRecordRow.point_id == after.id))
    r = subprocess.run([sys.executable, "-m", "rehost.cli.main", "--vault", str(vault.root), "check",
                        "--json"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "point records brought in line with the repository: 1 added, 0 removed" in r.stdout
    with vault.session() as s:
        assert s.get(PointRecordRow, after.id) is not None


def test_an_upgraded_vault_gets_its_records_from_the_manifests_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "v"
    vault = Vault.init(root)
    try:
        _machines(vault, tmp_path, ("a", "b", "c"), cycles=2)
        b = inventory.get_machine(vault, "b")
        last_b = vault.repo.list_points(b.id)[-1]
        app = _extra_point(vault, last_b, Consistency.APP, 5)
        _extra_point(vault, app, Consistency.CRASH, 10)
        # back to a schema without records (0005), then the upgrade every open runs
        cfg = schema.alembic_config(vault.engine)
        with vault.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
    finally:
        vault.close()

    vault = Vault.open(root)  # runs 0006: no records, every machine marked
    try:
        with vault.session() as s:
            assert s.scalars(select(PointRecordRow)).first() is None
            assert {r.dirty for r in s.scalars(select(PointSummaryRow))} == {1}
        spy = Spy(monkeypatch)
        views = {v["name"]: v for v in overview.machine_views(vault)}
        assert spy.calls.count("load_point_exact") == 8  # each manifest decoded once
        assert {n: v["points"] for n, v in views.items()} == {"a": 2, "b": 4, "c": 2}
        assert point_records.summaries(vault)[b.id].latest_app_id == app.id
        _assert_true(vault)
        spy.calls.clear()
        overview.machine_views(vault)
        assert spy.calls == []  # rebuilt once: from now on the records answer
    finally:
        vault.close()


# -- the hot paths read no manifest ----------------------------------------------------------------


def test_listings_health_and_ticks_decode_no_manifest(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks = _machines(vault, tmp_path, ("a", "b"), cycles=3)
    a = inventory.get_machine(vault, "a")
    app = _extra_point(vault, vault.repo.list_points(a.id)[-1], Consistency.APP, 1)
    point_records.sync(vault)  # written behind the records' back: a sync finds it
    _change(disks["a"])
    protection.replicate(vault, "a")  # after the app-consistent point, with it as its parent
    policies.create_policy(vault, "hourly", rpo_threshold="2h", crash_every="1h", app_every="1h")
    policies.attach(vault, "a", "hourly")
    machines = inventory.list_machines(vault)
    # the records answer as the manifests would
    for m in machines:
        points = vault.repo.list_points(m.id)
        summary = point_records.summaries(vault)[m.id]
        assert summary == PointSummary.of(points)
        at = datetime.now(UTC)
        assert policies.health_of(vault, m, summary, at) == policies.health_of(vault, m, points, at)
    assert point_records.summaries(vault)[a.id].latest_app_id == app.id

    spy = Spy(monkeypatch, vault)
    views = overview.machine_views(vault)
    assert [v["points"] for v in views] == [5, 3]
    for m in machines:
        policies.health_of(vault, m)
        overview.machine_view(vault, m)
    assert spy.calls == []

    # two hours on, "a" is due: the tick reads summaries; its cycle decodes its parent (and
    # that point's base), never the listing of all points
    later = time.time() + 2 * 3600
    sched = Scheduler(vault, clock=lambda: later)
    sched._last_retention = later  # type: ignore[misc]  # retention (not a hot path) is not due
    results = sched.tick()
    sched.close()
    assert [r.machine for r in results if r.ran] == ["a"] and not results[0].error, results
    assert set(spy.calls) <= {"load_point_exact"} and len(spy.calls) <= 2, spy.calls

    spy.calls.clear()
    now = time.time()
    sched = Scheduler(vault, clock=lambda: now)
    sched._last_retention = now  # type: ignore[misc]
    assert sched.tick() == []  # nothing due: the tick read one summary row per machine
    sched.close()
    overview.machine_views(vault)
    assert spy.calls == []
    _assert_true(vault)


def test_the_api_item_list_and_page_decode_no_manifest(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _disk(tmp_path, "web")
    _change(disk)
    tokens = make_vault(tmp_path, disk)
    with portal_for(tmp_path, tokens) as portal:
        first = portal.get("/machines")
        assert first.status_code == 200 and first.json()[0]["points"] == 1
        spy = Spy(monkeypatch)
        for _ in range(3):
            r = portal.get("/machines")
            assert r.status_code == 200 and r.json()[0]["points"] == 1
            one = portal.get("/machines/web")  # an item's page too
            assert one.status_code == 200 and one.json()["points"] == 1
        assert spy.calls == []


# -- several processes -----------------------------------------------------------------------------

CHILD = r"""
import os, sys
from pathlib import Path
from rehost.vault import protection
from rehost.vault.vault import Vault

root, name, disk, cycles = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
vault = Vault.open(Path(root))
try:
    for i in range(cycles):
        with open(disk, "r+b") as f:
            f.seek(i * 64 * 1024)
            f.write(os.urandom(64 * 1024))
        protection.replicate(vault, name)
finally:
    vault.close()
"""


def test_two_processes_replicating_different_machines_keep_true_records(vault: Vault, tmp_path: Path) -> None:
    disks = _machines(vault, tmp_path, ("a", "b"), cycles=0)
    cycles = 6
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(vault.root), name, str(disk), str(cycles)],
                              cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, disk in disks.items()]
    seen: list[int] = []
    while any(p.poll() is None for p in procs):  # listings meanwhile: never more than is stored
        total = sum(s.points for s in point_records.summaries(vault).values())
        seen.append(total)
        time.sleep(0.05)
    for p in procs:
        assert p.wait() == 0, p.stderr.read() if p.stderr else ""
    _assert_true(vault)
    assert {s.points for s in point_records.summaries(vault).values()} == {cycles}
    assert seen == sorted(seen), "a listing never lost a point another process recorded"
