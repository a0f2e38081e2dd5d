"""A repository writer: one per replication cycle (or prune), so cycles write side by side.

Each writer has its own open pack, its own pack-writer threads and its own statistics, and
may write through a storage wrapper of its own (a cycle's bandwidth limit). What writers
share is the repository's index, which a writer extends only after a pack and its index file
are stored (design §3 write order). A blob is "known" to a writer when it is in that index
or in one of the writer's own packs: a blob another writer merely holds in memory is not,
because that writer may still fail; at worst the same blob is stored twice, in two packs,
which prune tidies up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rehost.repository.crypto import NATIVE_ID_MAX, ZSTD_LEVEL, blob_ids
from rehost.repository.index import encode_index
from rehost.repository.manifest import RecoveryPoint, encode_point
from rehost.repository.pack import PACK_TARGET, BlobEntry, PackWriter
from rehost.repository.storage.base import Kind, Storage

if TYPE_CHECKING:
    from rehost.repository.repository import Repository

#: packs handed to the writer threads and not yet stored (each holds up to PACK_TARGET bytes)
WRITES_IN_FLIGHT = 4
#: threads storing packs: one hashes a pack (its id) while others wait on their write
#: and fsyncs (an uncompressed initial copy, in-process: 2.32-2.60 s with one, 2.08 s with two;
#: since the chunk's native diff, 2.04-2.47 s with two, 1.87-2.09 s with three, 1.86-2.30 s
#: with four: the writers, not the cycle's workers, were busy all the time)
PACK_WRITERS = 3
#: packs per index file: each file is a create and two fsyncs (its own and its folder's), and a
#: first copy stores a pack every ~17 ms. The packs stored since the last file are indexed
#: together once there are this many, and at every flush (design §3: the point is written only
#: after the index files of all its packs). A kill loses the index of at most this many packs
#: (plus those in flight): a resumed cycle stores them again.
INDEX_EVERY = 4


@dataclass(frozen=True, slots=True)
class _StoredPack:
    """A pack stored and not yet in an index file: what its index entry needs."""

    pack_id: str
    entries: list[BlobEntry]
    entries_text: str
    deferred: bool
    ids: set[str]
    stored_bytes: int


@dataclass
class WriteStats:
    """What a writer added: the honest numbers behind "stores only what changed"."""

    blobs_new: int = 0
    blobs_known: int = 0
    raw_bytes_new: int = 0
    stored_bytes: int = 0  # bytes of packs, index files and manifests written

    def __add__(self, other: WriteStats) -> WriteStats:
        return WriteStats(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.blobs_new, self.blobs_known, self.raw_bytes_new, self.stored_bytes)


class Writer:
    """Blobs in, packs and one recovery point out. ``add_sealed``/``flush``/``save_point``
    from one thread (the cycle's); ``seal_blob`` from any."""

    def __init__(self, repo: Repository, storage: Storage) -> None:
        self.repo = repo
        self.storage = storage
        self.stats = WriteStats()
        self._pack = PackWriter()
        self._pending: set[str] = set()  # blobs in the open pack
        self._flushing: set[str] = set()  # blobs of packs being stored: known, not yet indexed
        self._unindexed: list[_StoredPack] = []  # stored, waiting for an index file (INDEX_EVERY)
        #: ids of the packs this writer stored (or found stored already, byte for byte)
        self.packs_stored: set[str] = set()
        self._lock = threading.Lock()
        self._thread: ThreadPoolExecutor | None = None
        self._writes: deque[Future[None]] = deque()
        #: store blobs uncompressed and mark their packs deferred, for prune to compress: an
        #: initial copy on cheap storage, where compressing inline would bound its speed
        #: (docs/benchmarks.md, issue 17). Set by the cycle thread between disks.
        self.compress_later = False

    def may_compress_later(self, nbytes: int) -> bool:
        """Whether ``nbytes`` may be written uncompressed now and compressed later here."""
        return self.storage.room_to_defer(nbytes)

    def _known(self, bid: str) -> bool:
        """In the index or in one of this writer's own packs (open or being stored)."""
        return bid in self.repo.index.blobs or bid in self._pending or bid in self._flushing

    def seal_blob(self, data: bytes | memoryview) -> tuple[str, bytes | None]:
        """Id and sealed bytes of a blob, ``None`` if already stored. Safe in worker threads."""
        [(bid, sealed, _)] = self.seal_blobs([memoryview(data)])
        return bid, sealed

    def seal_blobs(self, pieces: Sequence[bytes | memoryview]) -> list[tuple[str, bytes | None, int]]:
        """``seal_blob`` of each piece, as (id, sealed or None, length): one call for a chunk's
        changed runs. A scattered delta seals tens of thousands of one-block blobs, and the
        Python around each (lookups, calls) cost more than its hash and compression."""
        ids = blob_ids(self.repo.keys.hash_key, pieces)
        fresh = [i for i, bid in enumerate(ids) if not self._known(bid)]
        sealed: list[bytes | None] = [None] * len(pieces)
        if fresh:
            done = self.repo.sealer.seal_many([pieces[i] for i in fresh], [ids[i].encode() for i in fresh],
                                              raw=self.compress_later)
            for i, blob in zip(fresh, done, strict=True):
                sealed[i] = blob
        return [(bid, blob, len(p)) for bid, blob, p in zip(ids, sealed, pieces, strict=True)]

    def seal_args(self) -> dict[str, object]:
        """What a native call needs to seal as ``seal_blobs`` does (``_chunkdiff.c``): it
        cannot ask the index whether a blob is known, so ``add_sealed_many`` drops those."""
        keys = self.repo.keys
        return {"hash_key": keys.hash_key, "id_max": NATIVE_ID_MAX, "level": ZSTD_LEVEL,
                "data_key": keys.data_key, "raw": self.compress_later}

    def add_sealed_many(self, sealed: list[tuple[str, bytes | None, int]]) -> None:
        """``add_sealed`` of each (id, sealed, length), in order."""
        stats = self.stats
        later = self.compress_later
        indexed = self.repo.index.blobs
        for bid, blob, raw_length in sealed:  # ``_known`` inlined: a delta adds 52,428 blobs
            if blob is None or bid in indexed or bid in self._pending or bid in self._flushing:
                stats.blobs_known += 1
                continue
            pack = self._pack
            pack.add(bid, blob, raw_length)
            if later:
                pack.deferred = True
            self._pending.add(bid)
            stats.blobs_new += 1
            stats.raw_bytes_new += raw_length
            if pack.size >= PACK_TARGET:
                self._flush_async()

    def add_sealed(self, bid: str, sealed: bytes | None, raw_length: int) -> None:
        """Queue a sealed blob into the open pack."""
        self.add_sealed_many([(bid, sealed, raw_length)])

    def put_blob(self, data: bytes | memoryview) -> str:
        self.repo._ensure_index()
        bid, sealed = self.seal_blob(data)
        self.add_sealed(bid, sealed, len(data))
        return bid

    def flush(self) -> None:
        """Store the open pack and wait until every pack handed to the threads is stored with
        its index: after this, everything added is durable (design §3 write order)."""
        self._flush_async()
        try:
            self._reap(block=True)
        finally:  # even after a failed pack: those stored are indexed, not left "known"
            self._index_stored(everything=True)

    def save_point(self, point: RecoveryPoint) -> RecoveryPoint:
        """Commit a point: flush its blobs first, then write the manifest (atomic). The manifest
        is encoded while the last packs are still being written (0.2 s for a long delta map)."""
        point_id, data = encode_point(replace(point, id=""), self.repo.sealer)
        self.flush()
        self.repo.save_addressed(self.storage, Kind.POINTS, point_id, data)
        self.stats.stored_bytes += len(data)
        return replace(point, id=point_id)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)
                self._thread = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _flush_async(self) -> None:
        """Hand the open pack to the writer threads, so reading and sealing go on while it is
        written, fsynced and indexed. At most WRITES_IN_FLIGHT packs wait (memory bound)."""
        self._reap(block=False)
        if not len(self._pack):
            return
        pack, self._pack = self._pack, PackWriter()
        ids, self._pending = self._pending, set()
        with self._lock:
            self._flushing = self._flushing | ids
        if self._thread is None:
            self._thread = ThreadPoolExecutor(PACK_WRITERS, thread_name_prefix="rehost-pack-writer")
        while len(self._writes) >= WRITES_IN_FLIGHT:
            self._writes.popleft().result()
        self._writes.append(self._thread.submit(self._store_pack, pack, ids))

    def _store_pack(self, pack: PackWriter, ids: set[str]) -> None:
        """The pack (design §3), then, every INDEX_EVERY packs, one index file for them."""
        try:
            pack_id, data = pack.finish(self.repo.sealer)
            self.repo.save_addressed(self.storage, Kind.DATA, pack_id, data)
        except BaseException:  # failed: unknown again, so a retry stores them
            with self._lock:
                self._flushing = self._flushing - ids
            raise
        with self._lock:
            self._unindexed.append(_StoredPack(pack_id, pack.entries, pack.entries_text, pack.deferred, ids,
                                               len(data)))
        self._index_stored(everything=False)

    def _index_stored(self, *, everything: bool) -> None:
        """One index file for the packs stored since the last: once INDEX_EVERY wait, or all
        of them (a flush); then their blobs are in the index."""
        with self._lock:
            if not self._unindexed or (not everything and len(self._unindexed) < INDEX_EVERY):
                return
            batch, self._unindexed = self._unindexed, []
        try:
            sealer = self.repo.sealer
            index_id, index_data = encode_index([(p.pack_id, p.entries) for p in batch], sealer,
                                                [p.pack_id for p in batch if p.deferred],
                                                {p.pack_id: p.entries_text for p in batch})
            self.repo.save_addressed(self.storage, Kind.INDEX, index_id, index_data)
            self.repo._index_packs(index_id, [(p.pack_id, p.entries, p.deferred) for p in batch])
            with self._lock:
                self.stats.stored_bytes += sum(p.stored_bytes for p in batch) + len(index_data)
                self.packs_stored.update(p.pack_id for p in batch)
        finally:  # indexed now; failed: unknown again, so a retry stores them
            with self._lock:
                self._flushing = self._flushing.difference(*(p.ids for p in batch))

    def _reap(self, *, block: bool) -> None:
        """Collect finished writes; the thread's error is raised here, in the caller's."""
        while self._writes and (block or self._writes[0].done()):
            self._writes.popleft().result()
