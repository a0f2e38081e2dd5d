"""Repository write path: content-addressed objects and crash leftovers."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import blake3
import pytest

from rehost.repository import pack
from rehost.repository.check import check
from rehost.repository.repository import Repository
from rehost.repository.storage import Kind, LocalStorage


def test_a_pack_stored_before_a_crash_is_rebuilt_identically_without_error(tmp_path: Path) -> None:
    """kill -9 between a pack and its index: the rerun makes the same pack (same name), which
    must count as stored — seen in CI as 'data/... already exists'."""
    storage = LocalStorage.create(tmp_path / "repo")
    repo = Repository.create(storage)
    repo.load_index()
    blob = random.Random(1).randbytes(100_000)
    repo.put_blob(blob)
    repo.flush()
    index_file = next(iter(storage.list(Kind.INDEX))).name
    storage.remove(Kind.INDEX, index_file)  # as if killed before the index was written
    again = Repository.open(storage)
    again.load_index()
    bid = again.put_blob(blob)
    again.flush()  # the same pack bytes again: no AlreadyExists
    assert again.read_blob(bid) == blob
    assert check(again, read_data=True).ok


def test_writers_side_by_side_each_count_their_own_and_store_everything(tmp_path: Path) -> None:
    """Two cycles at once in one process: each writer has its own pack and statistics; a blob
    both store is stored (at worst twice), and every blob reads back."""
    import threading

    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    repo.load_index()
    rnd = random.Random(2)
    shared = [rnd.randbytes(200_000) for _ in range(20)]
    own = {w: [rnd.randbytes(200_000) for _ in range(30)] for w in ("a", "b")}
    ids: dict[str, list[str]] = {}

    def cycle(name: str) -> None:
        with repo.writer() as w:
            ids[name] = [w.put_blob(b) for b in [*shared, *own[name]]]
            w.flush()
            stats[name] = w.stats

    stats: dict[str, object] = {}
    threads = [threading.Thread(target=cycle, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        s = stats[name]
        assert s.blobs_new + s.blobs_known == 50  # type: ignore[attr-defined]
        assert s.blobs_new >= 30  # type: ignore[attr-defined]  its own blobs are new to it
        for bid, data in zip(ids[name], [*shared, *own[name]], strict=True):
            assert repo.read_blob(bid) == data
    assert repo.stats.blobs_new == 0  # the repository's own writer wrote nothing
    assert check(repo, read_data=True).ok


def test_a_reader_finds_blobs_another_process_stored_after_it_loaded_the_index(tmp_path: Path) -> None:
    storage = LocalStorage.create(tmp_path / "repo")
    reader = Repository.create(storage)
    reader.load_index()
    writer = Repository.open(LocalStorage(tmp_path / "repo"))
    bid = writer.put_blob(b"written later by someone else" * 100)
    writer.flush()
    assert reader.read_blob(bid) == b"written later by someone else" * 100


def test_packs_are_named_by_their_blake3_and_check_still_reads_sha256_named_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs stored before 2026-12-07 are named by their SHA-256: a repository holding both
    kinds passes ``check --read-data``, and a pack whose bytes match neither name fails it."""
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    with monkeypatch.context() as m:
        m.setattr(pack, "pack_id_of", lambda data: hashlib.sha256(data).hexdigest())
        with repo.writer() as w:
            w.put_blob(random.Random(1).randbytes(50_000))
            w.flush()
    with repo.writer() as w:
        w.put_blob(random.Random(2).randbytes(50_000))
        w.flush()
    names = {o.name: repo.storage.load(Kind.DATA, o.name) for o in repo.storage.list(Kind.DATA)}
    assert sorted(hashlib.sha256(d).hexdigest() == n for n, d in names.items()) == [False, True]
    assert any(blake3.blake3(d).hexdigest() == n for n, d in names.items())
    assert check(repo, read_data=True).ok
    name, data = next(iter(names.items()))
    path = next((tmp_path / "repo").rglob(name))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert any("content does not match its name" in e for e in check(repo, read_data=True).errors)
