"""prune: forgets points, rewrites kept deltas whose base goes away, deletes only unused data,
and every kept point still reads back byte for byte."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from rehost.disks import open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.check import check
from rehost.repository.manifest import FULL_EVERY
from rehost.repository.prune import prune
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import Kind, LocalStorage

MiB = 1 << 20


def _digest_of_point(repo: Repository, point_id: str) -> str:
    p = repo.load_point_exact(point_id)
    h = hashlib.sha256()
    size = p.disks[0].size
    for off, data in iter_chunks(repo, p, 0):
        h.update(data if data is not None else bytes(min(MiB, size - off)))
    return h.hexdigest()


def test_prune_keeps_exactly_what_kept_points_need(tmp_path: Path) -> None:
    rng = random.Random(5)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(rng.randbytes(8 * MiB))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    expected: dict[str, str] = {}
    parent = None
    for _ in range(FULL_EVERY + 4):
        with open(disk, "r+b") as f:  # a whole chunk rewritten: its old blob can die
            f.seek(rng.randrange(8) * MiB)
            f.write(rng.randbytes(MiB))
        with open_disk(probe(disk)) as d:
            parent = run_cycle(repo, cache, "m", [(0, d)], parent=parent).point
        expected[parent.id] = hashlib.sha256(disk.read_bytes()).hexdigest()
    points = repo.list_points("m")
    assert points[0].disks[0].full and not points[5].disks[0].full
    assert points[5].disks[0].base == points[0].id  # differential: against the full base

    forget = {p.id for i, p in enumerate(points) if i not in (5, 12, len(points) - 1)}
    packs_before = sum(1 for _ in repo.storage.list(Kind.DATA))
    report = prune(repo, forget)
    # 5 and 12 lose their base (point 0), the last one its base (point FULL_EVERY)
    assert report.points_rewritten == 3
    assert report.packs_removed + report.packs_repacked > 0 and report.bytes_freed > 0
    kept = repo.list_points("m")
    assert len(kept) == 3
    assert all(d.full for p in kept for d in p.disks)
    survivors = [p.replaces or p.id for p in kept]
    assert survivors == [points[5].id, points[12].id, points[-1].id]
    for p in kept:
        assert _digest_of_point(repo, p.id) == expected[p.replaces or p.id]
    report_check = check(repo, read_data=True)
    assert report_check.ok, report_check.errors
    assert report_check.warnings == []  # no unreferenced packs left behind
    assert packs_before > 0

    # prune again: nothing more to do, nothing lost
    again = prune(repo, ())
    assert again.points_removed == 0 and again.packs_removed == 0
    for p in repo.list_points("m"):
        assert _digest_of_point(repo, p.id) == expected[p.replaces or p.id]

