"""prune: forgets points, rewrites kept deltas whose base goes away, deletes only unused data,
and every kept point still reads back byte for byte."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from rehost.disks import open_disk, probe
from rehost.errors import BackendError
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



def _stored(repo: Repository) -> int:
    return sum(o.size for o in repo.storage.list(Kind.DATA))


def test_an_initial_copy_is_stored_uncompressed_then_prune_compresses_it(tmp_path: Path) -> None:
    """On local storage the first copy skips compression (issue 17: it bounded the copy) and
    marks its packs; prune compresses them into new packs, once, and every point reads back
    the same. A point being read keeps its packs, and their mark, for a later prune."""
    rng = random.Random(8)
    words = [rng.randbytes(6).hex().encode() for _ in range(500)]
    text = b" ".join(rng.choice(words) for _ in range(1_200_000))[: 6 * MiB]
    disk = tmp_path / "disk.raw"
    disk.write_bytes(text + rng.randbytes(2 * MiB))  # compressible, then not
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    with open_disk(probe(disk)) as d:
        first = run_cycle(repo, cache, "m", [(0, d)], parent=None).point
    assert repo.index.deferred == set(repo.index.pack_ids)
    assert _stored(repo) > 8 * MiB  # stored as it is
    reopened = Repository.open(LocalStorage(tmp_path / "repo"))
    reopened.load_index()
    assert reopened.index.deferred == repo.index.deferred  # the mark is in the index files

    with open(disk, "r+b") as f:  # a delta is compressed as it is stored
        f.write(text[: MiB // 2][::-1])
    with open_disk(probe(disk)) as d:
        second = run_cycle(repo, cache, "m", [(0, d)], parent=first).point
    delta_packs = set(repo.index.pack_ids) - repo.index.deferred
    assert delta_packs and delta_packs.isdisjoint(repo.index.deferred)
    expected = {p.id: _digest_of_point(repo, p.id) for p in (first, second)}

    held = prune(repo, (), reading={first.id})  # a reader holds the first point's packs
    assert held.packs_compressed == 0
    repo.load_index()
    assert repo.index.deferred and len(repo.index.files) == 1  # consolidated, still marked

    before = _stored(repo)
    report = prune(repo, ())
    assert report.packs_compressed > 0 and report.packs_removed >= report.packs_compressed
    repo.load_index()
    assert repo.index.deferred == set()
    assert _stored(repo) < before - 4 * MiB  # the text shrank, the random 2 MiB stayed
    for pid, digest in expected.items():
        assert _digest_of_point(repo, pid) == digest
    checked = check(repo, read_data=True)
    assert checked.ok and checked.warnings == [], checked.errors

    again = prune(repo, ())  # blobs that did not shrink are not tried again
    assert again.packs_compressed == again.packs_removed == again.packs_repacked == 0


@pytest.mark.parametrize("why", ["bandwidth limit", "little free space"])
def test_an_initial_copy_is_compressed_inline_where_deferring_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """Under a bandwidth limit (or on remote storage) every byte costs, and a local disk
    without three times the disk's size free could fill up: no deferral there."""
    import shutil
    from collections import namedtuple

    from rehost.repository.storage import ThrottledStorage

    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"compressible " * (MiB // 4))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    if why == "bandwidth limit":
        writer = repo.writer(ThrottledStorage(repo.storage, 1 << 40))
    else:
        usage = namedtuple("usage", "total used free")
        short = usage(10 * MiB, 5 * MiB, 3 * disk.stat().st_size - 1)  # one byte short
        monkeypatch.setattr(shutil, "disk_usage", lambda _: short)
        writer = repo.writer()
    with open_disk(probe(disk)) as d:
        run_cycle(repo, DigestCache(tmp_path / "cache"), "m", [(0, d)], parent=None, writer=writer)
    writer.close()
    assert repo.index.pack_ids and repo.index.deferred == set()
    assert _stored(repo) < MiB // 4


@pytest.mark.parametrize("op, nth", [("save", 0), ("save", 1), ("remove", 0), ("remove", 1)])
def test_compressing_an_initial_copy_survives_a_failure_at_every_step(tmp_path: Path, op: str,
                                                                      nth: int) -> None:
    """A save or a delete that fails (a crash there: the new pack, its index file, which is
    the consolidated index too, the removal of the old index file, of the old pack) leaves a
    repository that reads the same and that the next prune finishes."""
    from rehost.repository.storage import FaultyStorage

    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"".join(b"block %d " % i * 200 for i in range(2000))[: 3 * MiB])
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    with open_disk(probe(disk)) as d:
        point = run_cycle(repo, DigestCache(tmp_path / "cache"), "m", [(0, d)], parent=None).point
    digest = _digest_of_point(repo, point.id)
    assert repo.index.deferred

    seen = iter(range(100))
    faulty = FaultyStorage(LocalStorage(tmp_path / "repo"), retryable=False,
                           fail_when=lambda o, kind, _: o == op and kind != Kind.LOCKS and next(seen) == nth)
    with pytest.raises(BackendError):
        prune(Repository.open(faulty), ())
    healthy = Repository.open(LocalStorage(tmp_path / "repo"))
    assert _digest_of_point(healthy, point.id) == digest
    assert check(healthy, read_data=True).ok
    assert prune(healthy, ()).packs_compressed <= 1  # the next prune finishes the job
    healthy.load_index()
    assert healthy.index.deferred == set() and check(healthy).warnings == []
    assert _digest_of_point(healthy, point.id) == digest
    assert _stored(healthy) < MiB


def test_prune_compresses_a_slice_of_the_deferred_packs_when_asked(tmp_path: Path) -> None:
    """``rehost serve`` compresses a large initial copy a few packs per pass (cycles wait
    while a prune runs): the rest stay marked for the next pass, and the data reads the same."""
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    digests = {}
    for i in range(3):  # three machines, three initial copies, three deferred packs
        disk = tmp_path / f"{i}.raw"
        disk.write_bytes((b"machine %d " % i * MiB)[: 2 * MiB])
        with open_disk(probe(disk)) as d:
            p = run_cycle(repo, cache, f"m{i}", [(0, d)], parent=None).point
        digests[p.id] = _digest_of_point(repo, p.id)
    assert len(repo.index.deferred) == 3
    assert [prune(repo, (), compress=2).packs_compressed, len(repo.index.deferred)] == [2, 1]
    assert [prune(repo, (), compress=2).packs_compressed, len(repo.index.deferred)] == [1, 0]
    assert {pid: _digest_of_point(repo, pid) for pid in digests} == digests
    assert check(repo, read_data=True).ok


def _random_initial_copy(tmp_path: Path, seed: int, size: int) -> tuple[Repository, str, str, set[str]]:
    """An initial copy of incompressible data: the repository, its point, the point's digest
    and the (deferred) packs it stored."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(random.Random(seed).randbytes(size))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    with open_disk(probe(disk)) as d:
        point = run_cycle(repo, DigestCache(tmp_path / "cache"), "m", [(0, d)], parent=None).point
    return repo, point.id, _digest_of_point(repo, point.id), set(repo.index.pack_ids)


def _reads_back_from_the_same_packs(tmp_path: Path, point_id: str, digest: str, packs: set[str]) -> None:
    """Opened afresh: the same packs, none marked, the point byte for byte, check clean."""
    reopened = Repository.open(LocalStorage(tmp_path / "repo"))
    reopened.load_index()
    assert set(reopened.index.pack_ids) == packs and reopened.index.deferred == set()
    assert _digest_of_point(reopened, point_id) == digest
    assert check(reopened, read_data=True).ok


def test_an_initial_copy_that_does_not_compress_stays_where_it_is(tmp_path: Path) -> None:
    """Random data: no blob shrinks, so the pack is left as stored and no longer marked. Moving
    it would write the same bytes under the same content address, which the sweep then deleted
    as the old pack (clean-clone CI, test_concurrency: "blob ... is not in the index")."""
    repo, point_id, digest, packs = _random_initial_copy(tmp_path, 3, 3 * MiB)
    assert packs and repo.index.deferred == packs

    report = prune(repo, ())
    assert (report.packs_compressed, report.packs_left_as_stored, report.packs_removed) == (0, len(packs), 0)
    _reads_back_from_the_same_packs(tmp_path, point_id, digest, packs)


def test_a_pack_written_again_byte_for_byte_is_not_deleted_as_its_old_self(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever moves blobs (a repack, a compression) may recreate a pack exactly, and so its
    id: the sweep keeps what the prune itself stored. Here the compressor claims a win but
    hands back the stored bytes, which is what one pack of an initial copy could come to."""
    import rehost.repository.prune as prune_module

    real = prune_module._compressed

    def claims_to_shrink(repo: Repository, packs: list) -> object:  # type: ignore[type-arg]
        for pack_id, live, moved, _ in real(repo, packs):
            yield pack_id, live, moved, True

    monkeypatch.setattr(prune_module, "_compressed", claims_to_shrink)
    repo, point_id, digest, packs = _random_initial_copy(tmp_path, 4, 2 * MiB)

    report = prune(repo, ())
    assert report.packs_compressed == len(packs) and report.packs_removed == 0
    _reads_back_from_the_same_packs(tmp_path, point_id, digest, packs)
