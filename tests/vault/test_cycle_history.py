"""The per-cycle history (``cycle_records``): every cycle records one row however it ran,
failures too, and retention lets old rows go (policy retention or 7 days, the longer)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rehost.errors import RehostError
from rehost.vault import cycle_history, inventory, policies, protection
from rehost.vault.cycles import replicate_job
from rehost.vault.vault import Vault

MiB = 1 << 20


def _vault(tmp_path: Path) -> tuple[Vault, Path]:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * MiB)
        f.write(os.urandom(64 * 1024))
    vault = Vault.init(tmp_path / "vault")
    inventory.add_image_source(vault, "web", [disk])
    return vault, disk


def _since(vault: Vault) -> list[cycle_history.CycleRecord]:
    machine = inventory.get_machine(vault, "web")
    return cycle_history.history(vault, machine.id, datetime.now(UTC) - timedelta(hours=1))


def test_every_cycle_records_a_row_directly_or_as_a_job(tmp_path: Path) -> None:
    vault, disk = _vault(tmp_path)
    first = protection.replicate(vault, "web")
    with open(disk, "r+b") as f:
        f.seek(2 * MiB)
        f.write(os.urandom(8192))
    second = replicate_job(vault, "web")  # what `rehost replicate`, the API and the scheduler run
    rows = _since(vault)
    assert [r.point for r in rows] == [first.point.id, second.point.id]
    assert [r.point_time for r in rows] == [first.point.time, second.point.time]
    assert rows[0].changed_bytes == first.changed_bytes
    assert rows[1].changed_bytes == second.changed_bytes == 8192
    assert rows[1].stored_bytes == second.stats.stored_bytes
    assert all(r.ok and r.seconds > 0 and r.consistency == "crash-consistent" for r in rows)
    assert rows[0].time <= rows[1].time <= datetime.now(UTC)


def test_a_failed_cycle_records_its_error(tmp_path: Path) -> None:
    vault, disk = _vault(tmp_path)
    protection.replicate(vault, "web")
    disk.unlink()  # the source is gone
    with pytest.raises((RehostError, OSError)):
        protection.replicate(vault, "web")
    ok, failed = _since(vault)
    assert ok.ok and not failed.ok and failed.point is None
    assert "disk.raw" in failed.error or "No such file" in failed.error


def test_retention_keeps_seven_days_or_the_policy_retention_whichever_is_longer(tmp_path: Path) -> None:
    vault, disk = _vault(tmp_path)
    inventory.add_image_source(vault, "db", [disk])
    policies.create_policy(vault, "long", retention="10d")
    policies.attach(vault, "db", "long")
    web, db = (inventory.get_machine(vault, n).id for n in ("web", "db"))
    now = datetime.now(UTC)
    for mid in (web, db, "a-machine-long-gone"):
        for days in (1, 8, 11):
            cycle_history.record(vault, mid, seconds=1, point=f"{mid}-{days}", now=now - timedelta(days=days))
    assert cycle_history.apply_retention(vault, now) == 2 + 1 + 2

    def kept(mid: str) -> list[str | None]:
        return [r.point for r in cycle_history.history(vault, mid, now - timedelta(days=30))]

    assert kept(web) == [f"{web}-1"]  # no policy: 7 days
    assert kept(db) == [f"{db}-8", f"{db}-1"]  # its policy keeps 10 days
    assert kept("a-machine-long-gone") == ["a-machine-long-gone-1"]


def test_recording_applies_retention_now_and_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault, _ = _vault(tmp_path)
    old = datetime.now(UTC) - timedelta(days=30)
    for i in range(3):
        cycle_history.record(vault, "m", seconds=1, point=str(i), now=old)
    monkeypatch.setattr(cycle_history, "PRUNE_EVERY", 1)
    cycle_history.record(vault, "m", seconds=1, point="new")
    assert [r.point for r in cycle_history.history(vault, "m", old - timedelta(days=1))] == ["new"]


def test_history_with_the_previous_cycle(tmp_path: Path) -> None:
    vault, _ = _vault(tmp_path)
    now = datetime.now(UTC)
    cycle_history.record(vault, "m", seconds=1, point="before", now=now - timedelta(hours=30))
    cycle_history.record(vault, "m", seconds=1, error="down", now=now - timedelta(hours=26))
    cycle_history.record(vault, "m", seconds=1, point="inside", now=now - timedelta(hours=2))
    since = now - timedelta(hours=24)
    assert [r.point for r in cycle_history.history(vault, "m", since)] == ["inside"]
    # the newest successful cycle before: where the RPO stood when the window opened
    with_before = cycle_history.history(vault, "m", since, with_previous=True)
    assert [r.point for r in with_before] == ["before", "inside"]
