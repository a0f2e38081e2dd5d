"""Repository write path: content-addressed objects and crash leftovers."""

from __future__ import annotations

import random
from pathlib import Path

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
