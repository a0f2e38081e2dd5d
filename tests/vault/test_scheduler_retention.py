"""Retention in rehost serve: one prune for every item, and only when some point must go or an
initial copy is to be compressed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rehost.repository.check import check
from rehost.repository.storage import Kind
from rehost.vault import inventory, policies, protection
from rehost.vault.scheduler import Scheduler
from rehost.vault.vault import Vault

MiB = 1 << 20


def test_retention_thins_old_points_and_leaves_the_repository_alone_otherwise(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    try:
        for name in ("a", "b"):
            disk = tmp_path / f"{name}.raw"
            with open(disk, "wb") as f:
                f.truncate(4 * MiB)
            inventory.add_image_source(vault, name, [disk])
            for i in range(3):
                with open(disk, "r+b") as f:  # compressible: random data would stay as stored
                    f.write(os.urandom(32 * 1024) * 2 + bytes([i]))
                protection.replicate(vault, name)
        policies.create_policy(vault, "short", rpo_threshold="1h", retention="2h")
        for name in ("a", "b"):
            policies.attach(vault, name, "short")
        log: list[str] = []
        now = time.time()
        sched = Scheduler(vault, clock=lambda: now, log=log.append)
        sched._retention([(m, m.policy) for m in inventory.list_machines(vault)], wait=True)  # type: ignore[misc]
        # no point is due to go, but the initial copies were stored uncompressed: compressed now
        assert not any("retention" in line for line in log), log
        assert [line for line in log if line.startswith("compressed")] == [
            "compressed 2 pack(s) an initial copy stored uncompressed"], log
        assert vault.repo.index.deferred == set() and len(vault.repo.list_points()) == 6
        assert check(vault.repo, read_data=True).ok
        packs = {o.name for o in vault.repo.storage.list(Kind.DATA)}
        sched = Scheduler(vault, clock=lambda: now, log=log.append)
        sched._retention([(m, m.policy) for m in inventory.list_machines(vault)], wait=True)  # type: ignore[misc]
        assert len(log) == 1 and {o.name for o in vault.repo.storage.list(Kind.DATA)} == packs  # no prune

        later = now + 3 * 24 * 3600  # three days on: beyond the 2 h window
        sched = Scheduler(vault, clock=lambda: later, log=log.append)
        sched._retention([(m, m.policy) for m in inventory.list_machines(vault)], wait=True)  # type: ignore[misc]
        left = vault.repo.list_points()
        assert len(left) < 6 and {p.machine for p in left} <= {m.id for m in inventory.list_machines(vault)}
        assert sorted(line for line in log if "retention removed" in line) == [
            f"{n}: retention removed {3 - sum(p.machine == m.id for p in left)} point(s)"
            for n, m in sorted((m.name, m) for m in inventory.list_machines(vault))
        ], log
        for m in inventory.list_machines(vault):
            assert any(p.machine == m.id for p in left), "the latest point of each item stays"
    finally:
        vault.close()
