"""A chunk diffed and sealed in one native call (rehost/replication/_chunkdiff.c) gives what the
Python path gives: the same digests, runs, blob ids and blob contents. The two meet in one
repository (a vault written where the module is built is read and extended where it is not),
so any difference would be a point that is not the disk."""

from __future__ import annotations

import mmap
import random
from pathlib import Path

import pytest

from rehost.replication import chunk_diff
from rehost.replication.digests import digest_blocks
from rehost.repository.crypto import NATIVE_ID_MAX
from rehost.repository.repository import BLOCK_SIZE, CHUNK_SIZE, Repository
from rehost.repository.storage import LocalStorage
from rehost.repository.writer import Writer
from tests.native import native_module


def _chunks(length: int, seed: int) -> tuple[bytes, bytes]:
    """A chunk before and after a cycle's worth of changes: scattered blocks, blocks zeroed,
    zeros written over, a run longer than the native ids take, and a changed last block."""
    rng = random.Random(seed)
    before = bytearray(rng.randbytes(length))
    before[8 * BLOCK_SIZE : 12 * BLOCK_SIZE] = bytes(4 * BLOCK_SIZE)
    after = bytearray(before)
    for block in rng.sample(range(20, length // BLOCK_SIZE - 40), 25):
        after[block * BLOCK_SIZE : block * BLOCK_SIZE + 100] = rng.randbytes(100)
    after[2 * BLOCK_SIZE : 5 * BLOCK_SIZE] = bytes(3 * BLOCK_SIZE)  # zeroed
    after[5 * BLOCK_SIZE : 6 * BLOCK_SIZE] = rng.randbytes(BLOCK_SIZE)  # data right after zeros
    after[9 * BLOCK_SIZE : 10 * BLOCK_SIZE] = b"\x01" * BLOCK_SIZE  # a zero block written
    after[10 * BLOCK_SIZE : 11 * BLOCK_SIZE] = after[30 * BLOCK_SIZE : 31 * BLOCK_SIZE]  # a copy
    longer = length - 2 * NATIVE_ID_MAX
    after[longer : longer + NATIVE_ID_MAX + 3 * BLOCK_SIZE] = rng.randbytes(NATIVE_ID_MAX + 3 * BLOCK_SIZE)
    after[-1] ^= 0xFF
    return bytes(before), bytes(after)


def _writer(tmp_path: Path, encrypted: bool, raw: bool) -> Writer:
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"), password="pw" if encrypted else None)
    writer = repo.writer()
    writer.compress_later = raw
    return writer


def _contents(writer: Writer, result: chunk_diff.ChunkResult) -> list[tuple[str, int, bytes]]:
    opened = writer.repo.sealer.open
    return [(bid, length, opened(sealed, bid.encode())) for bid, sealed, length in result.sealed if sealed]


@pytest.mark.parametrize("length", [CHUNK_SIZE, CHUNK_SIZE - 1000])
@pytest.mark.parametrize(("encrypted", "raw"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "mmap"])
def test_the_native_diff_equals_the_python_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int, encrypted: bool, raw: bool, kind: str
) -> None:
    native_module("replication._chunkdiff", "gcc, libxxhash-dev, libzstd-dev and libssl-dev")
    before, after = _chunks(length, seed=length + encrypted + 2 * raw)
    old = digest_blocks(before)
    writer = _writer(tmp_path, encrypted, raw)
    image = tmp_path / "chunk"
    image.write_bytes(after)
    with open(image, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as pages:
        kinds: dict[str, bytes | memoryview] = {
            "bytes": after, "bytearray": memoryview(bytearray(after)), "mmap": memoryview(pages)}
        data = kinds[kind]
        native = chunk_diff.diff_chunk(writer, 7 * CHUNK_SIZE, data, length, old)
        monkeypatch.setattr(chunk_diff, "_DIFF_AND_SEAL", None)
        python = chunk_diff.diff_chunk(writer, 7 * CHUNK_SIZE, data, length, old)
        del data, kinds

    assert native.digests == python.digests == digest_blocks(after)
    assert native.entries == python.entries
    assert native.changed == python.changed
    assert [e for e in native.entries if e.blob is None]  # zero runs were cut, and data runs
    assert any(e.length > NATIVE_ID_MAX for e in native.entries)  # the run left to Python
    contents = _contents(writer, native)
    assert contents == _contents(writer, python)
    for entry, (bid, length_, content) in zip([e for e in native.entries if e.blob], contents, strict=True):
        start = entry.offset - 7 * CHUNK_SIZE
        assert (entry.blob, entry.length, after[start : start + entry.length]) == (bid, length_, content)


def test_an_unchanged_chunk_seals_nothing(tmp_path: Path) -> None:
    native_module("replication._chunkdiff", "gcc, libxxhash-dev, libzstd-dev and libssl-dev")
    _, after = _chunks(CHUNK_SIZE, seed=3)
    writer = _writer(tmp_path, False, False)
    result = chunk_diff.diff_chunk(writer, 0, after, CHUNK_SIZE, digest_blocks(after))
    assert (result.entries, result.sealed, result.changed) == ([], [], 0)


def test_the_native_diff_refuses_digests_of_another_length(tmp_path: Path) -> None:
    native = native_module("replication._chunkdiff", "gcc, libxxhash-dev, libzstd-dev and libssl-dev")
    writer = _writer(tmp_path, False, False)
    with pytest.raises(ValueError, match="old digests: 8 bytes for 2 blocks"):
        native.diff_and_seal_many([bytes(BLOCK_SIZE), bytes(2 * BLOCK_SIZE)], [bytes(8), bytes(8)],
                                  **writer.seal_args())
    with pytest.raises(ValueError, match="one old digests per chunk"):
        native.diff_and_seal_many([bytes(BLOCK_SIZE)], [], **writer.seal_args())
    with pytest.raises(ValueError, match="hash key must be 32 bytes"):
        native.diff_and_seal_many([bytes(BLOCK_SIZE)], [bytes(8)], **{**writer.seal_args(), "hash_key": b"k"})
