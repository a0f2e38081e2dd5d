"""The writer's index files: one for several packs, and never a stored pack left unindexed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rehost.errors import BackendError
from rehost.repository import writer as writer_module
from rehost.repository.check import check
from rehost.repository.index import decode_index
from rehost.repository.repository import Repository
from rehost.repository.storage import Kind, LocalStorage
from rehost.repository.storage.faults import FaultyStorage

PACKS = 10


def _blobs(seed: int) -> list[bytes]:
    """Incompressible blobs, each filling a pack of the small size the tests set."""
    rnd = random.Random(seed)
    return [rnd.randbytes(100_000) for _ in range(PACKS)]


@pytest.fixture(autouse=True)
def _small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PACK_TARGET", 64 * 1024)


def _packs_per_index_file(storage: LocalStorage, repo: Repository) -> list[list[str]]:
    return [[p.id for p in decode_index(storage.load(Kind.INDEX, o.name), repo.sealer, o.name)]
            for o in storage.list(Kind.INDEX)]


def test_one_index_file_for_several_packs_and_each_pack_in_one(tmp_path: Path) -> None:
    storage = LocalStorage.create(tmp_path / "repo")
    repo = Repository.create(storage)
    repo.load_index()
    blobs = _blobs(1)
    with repo.writer() as w:
        ids = [w.put_blob(b) for b in blobs]
        w.flush()
    packs = {o.name for o in storage.list(Kind.DATA)}
    files = _packs_per_index_file(storage, repo)
    assert len(packs) == PACKS
    assert len(files) <= 3  # one per four packs (INDEX_EVERY), not one per pack
    assert sorted(p for f in files for p in f) == sorted(packs)  # each pack in exactly one
    assert sum(len(f) < writer_module.INDEX_EVERY for f in files) <= 1  # the flush's remainder
    fresh = Repository.open(storage)
    fresh.load_index()
    assert [fresh.read_blob(i) for i in ids] == blobs
    assert check(fresh, read_data=True).ok


def test_a_failed_pack_leaves_the_stored_ones_indexed_and_its_own_blobs_unknown(tmp_path: Path) -> None:
    """The sixth pack's save fails: the flush says so; the packs stored around it are indexed
    (a fresh open reads them), the failed pack's blob is stored again by the retried cycle and
    nothing is stored twice."""
    inner = LocalStorage.create(tmp_path / "repo")
    repo = Repository.create(inner)
    repo.load_index()
    saves = {"data": 0}

    def sixth_pack(op: str, kind: Kind, name: str) -> bool:
        if op == "save" and kind is Kind.DATA:
            saves["data"] += 1
            return saves["data"] == 6
        return False

    faulty = FaultyStorage(inner, fail_when=sixth_pack, failures=1, retryable=False)
    blobs = _blobs(2)
    with repo.writer(faulty) as w:
        with pytest.raises(BackendError, match="injected fault"):  # where the writer meets it
            for b in blobs:
                w.put_blob(b)
            w.flush()
        assert faulty.injected == 1
        ids = [w.put_blob(b) for b in blobs]  # the cycle again, same writer
        w.flush()
    fresh = Repository.open(inner)
    fresh.load_index()
    stored = [e.id for entries in fresh.index.packs.values() for e in entries]
    assert sorted(stored) == sorted(ids)  # the failed one's blob once, the others not again
    assert len(list(inner.list(Kind.DATA))) == len(fresh.index.packs)  # no pack left unindexed
    assert [fresh.read_blob(i) for i in ids] == blobs
    assert check(fresh, read_data=True).ok
