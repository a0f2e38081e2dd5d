"""The diff of one chunk against its previous digests: which 4 KiB blocks changed, cut into runs
of data or zeros, each data run sealed as a blob (design §3). A cycle calls it per chunk from
its worker threads; a batch of chunks read whole goes to the native module in one call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, count
from operator import ne
from typing import Any

from rehost.replication.digests import DIGEST_SIZE, ZERO_DIGEST, block_count, digest_blocks
from rehost.repository.manifest import MapEntry
from rehost.repository.repository import BLOCK_SIZE
from rehost.repository.writer import Writer


@dataclass
class ChunkResult:
    digests: bytes
    entries: list[MapEntry]
    sealed: list[tuple[str, bytes | None, int]]
    changed: int


def diff_chunk(
    repo: Writer,
    offset: int,
    data: bytes | memoryview | None,
    length: int,
    old: bytes,
    dirty: list[tuple[int, int]] | None = None,
) -> ChunkResult:
    """Digest a chunk, find changed blocks, cut them into runs and seal data runs.

    ``dirty``: block ranges (relative to the chunk) a change tracker reported; every other
    block is known unchanged, was not read, and keeps its old digest.
    """
    if data is not None and dirty is None and _DIFF_AND_SEAL is not None:
        return diff_batch(repo, [(offset, memoryview(data))], [old])[0]
    if data is None:
        nblocks = block_count(length)
        new = ZERO_DIGEST * nblocks
        if length % BLOCK_SIZE:  # a short last block has its own digest
            new = new[:-DIGEST_SIZE] + digest_blocks(bytes(length % BLOCK_SIZE))
    else:
        new = digest_blocks(data)
    if dirty is not None:
        merged = bytearray(old)
        for a, b in dirty:
            merged[a * DIGEST_SIZE : b * DIGEST_SIZE] = new[a * DIGEST_SIZE : b * DIGEST_SIZE]
        new = bytes(merged)
    if new == old:
        return ChunkResult(new, [], [], 0)
    runs = [(i * BLOCK_SIZE, min(j * BLOCK_SIZE, length), zero)
            for i, j, zero in _changed_runs(new, old, data is None)]
    if data is None:
        return _result(offset, new, runs, [])
    new, sealed = _seal_runs(repo, memoryview(data), new, runs)
    return _result(offset, new, runs, sealed)


def _seal_runs(
    repo: Writer, view: memoryview, new: bytes, runs: list[tuple[int, int, bool]]
) -> tuple[bytes, list[tuple[str, bytes | None, int]]]:
    """The data runs of a chunk sealed in Python, from copies where the chunk is a view of
    pages (``_stable_runs``, which also gives the digests of the copies)."""
    pieces: Sequence[bytes | memoryview]
    if view.readonly:
        new, pieces = _stable_runs(view, new, runs)
    else:
        pieces = [view[a:b] for a, b, zero in runs if not zero]
    return new, repo.seal_blobs(pieces) if pieces else []


def _result(offset: int, new: bytes, runs: list[tuple[int, int, bool]],
            sealed: list[tuple[str, bytes | None, int]]) -> ChunkResult:
    """A chunk's map entries: its runs in order, each data run with the next sealed blob."""
    ids = iter(sealed)
    entries = [MapEntry(offset + a, b - a, None if zero else next(ids)[0], 0) for a, b, zero in runs]
    return ChunkResult(new, entries, sealed, sum(b - a for a, b, _ in runs))


def _native_diff() -> Callable[..., list[tuple[bytes, list[tuple[int, int, bool]], list[Any]]]] | None:
    try:
        from rehost.replication import _chunkdiff
    except ImportError:  # not built (setup.py): the Python path below, slower, same result
        return None
    return _chunkdiff.diff_and_seal_many


#: ``diff_chunk`` of a chunk read whole, in one native call without the GIL (``_chunkdiff.c``)
_DIFF_AND_SEAL = _native_diff()


def diff_batch(repo: Writer, chunks: list[tuple[int, memoryview]], olds: list[bytes]) -> list[ChunkResult]:
    """``diff_chunk`` of each chunk (a worker's batch) in one call that gives the GIL up once:
    digests, runs, and the id and sealed bytes of each data run (copied first from a view of
    pages, as ``_stable_runs`` does). Runs too long for its ids (``NATIVE_ID_MAX``) are sealed
    here, as before."""
    done = _DIFF_AND_SEAL([view for _, view in chunks], olds, **repo.seal_args())  # type: ignore[misc]
    return [_native_result(repo, offset, view, *r) for (offset, view), r in zip(chunks, done, strict=True)]


def _native_result(repo: Writer, offset: int, view: memoryview, new: bytes,
                   runs: list[tuple[int, int, bool]], blobs: list[Any]) -> ChunkResult:
    if None in blobs:  # runs too long for the native ids
        data_runs = [run for run in runs if not run[2]]
        longer = [run for run, blob in zip(data_runs, blobs, strict=True) if blob is None]
        new, sealed = _seal_runs(repo, view, new, longer)
        rest = iter(sealed)
        blobs = [blob if blob is not None else next(rest) for blob in blobs]
    return _result(offset, new, runs, blobs)


def _stable_runs(
    view: memoryview, new: bytes, runs: list[tuple[int, int, bool]]
) -> tuple[bytes, list[bytes]]:
    """The data runs of a chunk that is a view of a file's pages (``FileDisk.mapped``), copied,
    and the chunk's digests with those of the copies.

    The pages may change while the chunk is diffed (an image file in use). Sealing from the
    view would read it twice (the id, then the compression), and a block written between the
    two would be stored under another block's id; and a digest taken before a write would be
    remembered for data stored after it, so the next cycle could take the block for
    unchanged when it is not. One copy, sealed and digested again, keeps the point and its
    digests the same data. Only changed runs are copied: a delta's few, an initial copy's all.
    """
    digests = bytearray(new)
    pieces = []
    for a, b, zero in runs:
        if not zero:
            piece = bytes(view[a:b])
            first = a // BLOCK_SIZE * DIGEST_SIZE
            digests[first : first + block_count(b - a) * DIGEST_SIZE] = digest_blocks(piece)
            pieces.append(piece)
    return bytes(digests), pieces


_ZERO_Q = int.from_bytes(ZERO_DIGEST, sys.byteorder)


def _changed_runs(new: bytes, old: bytes, all_zero: bool) -> list[tuple[int, int, bool]]:
    """(first block, end block, zero) of each run of changed blocks that are all zeros or all
    data. The comparison runs in C (``map``/``compress`` over 64-bit digests): a Python step
    per block cost more than the digests themselves on a delta that touches every chunk."""
    new_q, old_q = memoryview(new).cast("Q"), memoryview(old).cast("Q")
    runs: list[tuple[int, int, bool]] = []
    start = prev = -2
    kind = False
    for i in compress(count(), map(ne, new_q, old_q)):
        zero = all_zero or new_q[i] == _ZERO_Q
        if i == prev + 1 and zero == kind:
            prev = i
            continue
        if start >= 0:
            runs.append((start, prev + 1, kind))
        start = prev = i
        kind = zero
    if start >= 0:
        runs.append((start, prev + 1, kind))
    return runs


def native() -> bool:
    """Whether the native module is built: batches go to ``diff_batch``, else chunk by chunk."""
    return _DIFF_AND_SEAL is not None
