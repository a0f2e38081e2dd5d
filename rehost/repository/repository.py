"""The repository facade: blobs in, recovery points out (design §2-§3).

It keeps the write order: a pack is stored, then its index file, and a recovery point only
after every blob it references is in a stored pack and index.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from rehost.errors import AlreadyExists, IntegrityError, NotFound, ObjectNotFound, UsageError
from rehost.repository.crypto import KeyMaterial, Sealer, blob_id, unwrap_keys, wrap_keys
from rehost.repository.index import Index, decode_index, encode_index
from rehost.repository.manifest import (
    DiskMap,
    MapEntry,
    RecoveryPoint,
    decode_point,
    encode_point,
    overlay,
)
from rehost.repository.pack import PACK_TARGET, PackWriter
from rehost.repository.storage.base import Kind, Storage

FORMAT_VERSION = 1
#: packs handed to the writer thread and not yet stored (each holds up to PACK_TARGET bytes)
WRITES_IN_FLIGHT = 2
BLOCK_SIZE = 4096
CHUNK_SIZE = 1024 * 1024


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


class Repository:
    """An opened repository. Not shared between processes while writing (the vault locks)."""

    def __init__(self, storage: Storage, config: dict[str, object], keys: KeyMaterial) -> None:
        self.storage = storage
        self.config = config
        self.keys = keys
        self._local = threading.local()
        self.index = Index()
        self._index_loaded = False
        self._pack = PackWriter()
        self._pending: set[str] = set()  # blobs in the open pack
        self._flushing: set[str] = set()  # blobs of packs being stored: known, not yet indexed
        self._writer: ThreadPoolExecutor | None = None
        self._writes: deque[Future[None]] = deque()
        self.stats = WriteStats()
        self._blob_cache: OrderedDict[str, bytes] = OrderedDict()
        # guards the blob cache and the lazy index load: readers serve NBD from threads
        self._lock = threading.Lock()
        self._maps: dict[tuple[str, int], list[MapEntry]] = {}
        self._points: dict[str, RecoveryPoint] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, storage: Storage, *, password: str | None = None) -> Repository:
        keys = KeyMaterial.generate(encrypted=password is not None)
        config: dict[str, object] = {
            "version": FORMAT_VERSION,
            "id": secrets.token_hex(16),
            "block_size": BLOCK_SIZE,
            "chunk_size": CHUNK_SIZE,
            "compression": "zstd",
            "encryption": "aes-256-gcm" if password is not None else "none",
        }
        if password is None:
            config["hash_key"] = keys.hash_key.hex()
        else:
            storage.save(Kind.KEYS, secrets.token_hex(16), wrap_keys(keys, password))
        storage.save(Kind.CONFIG, "config", json.dumps(config, indent=1).encode())
        return cls(storage, config, keys)

    @classmethod
    def open(cls, storage: Storage, password: Callable[[], str] | None = None) -> Repository:
        """Open; ``password`` is called only if the repository is encrypted."""
        try:
            config = json.loads(storage.load(Kind.CONFIG, "config"))
        except ObjectNotFound:
            raise NotFound(f"no repository at {storage.location}") from None
        except ValueError as e:
            raise IntegrityError(f"repository config is damaged: {e}") from None
        if config.get("version") != FORMAT_VERSION:
            raise UsageError(f"repository format {config.get('version')} is not supported")
        if config["encryption"] == "none":
            return cls(storage, config, KeyMaterial(hash_key=bytes.fromhex(config["hash_key"])))
        if password is None:
            raise UsageError("the repository is encrypted: a password is needed")
        secret = password()
        keyfiles = [o.name for o in storage.list(Kind.KEYS)]
        if not keyfiles:
            raise IntegrityError("encrypted repository has no key file")
        last: Exception | None = None
        for name in keyfiles:
            try:
                return cls(storage, config, unwrap_keys(storage.load(Kind.KEYS, name), secret))
            except Exception as e:  # try every key file before giving up
                last = e
        assert last is not None
        raise last

    @property
    def encrypted(self) -> bool:
        return self.keys.data_key is not None

    @property
    def sealer(self) -> Sealer:
        """A per-thread sealer (zstd contexts are not thread-safe)."""
        s: Sealer | None = getattr(self._local, "sealer", None)
        if s is None:
            s = self._local.sealer = Sealer(self.keys)
        return s

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            self.storage.close()

    # -- index -----------------------------------------------------------------------------

    def load_index(self, *, strict: bool = True) -> list[str]:
        """Read every index file; returns problems found (raised instead when ``strict``)."""
        problems: list[str] = []
        index = Index()
        for info in self.storage.list(Kind.INDEX):
            try:
                data = self.storage.load(Kind.INDEX, info.name)
                index.add_file(info.name, decode_index(data, self.sealer, info.name))
            except (IntegrityError, ObjectNotFound) as e:
                if strict:
                    raise
                problems.append(str(e))
        self.index = index
        self._index_loaded = True
        return problems

    def refresh_index(self) -> None:
        """Load only index files written since the last load (cheap per cycle); reload all if
        some went away (prune consolidated them)."""
        if not self._index_loaded:
            self.load_index()
            return
        names = {o.name for o in self.storage.list(Kind.INDEX)}
        if set(self.index.files) - names:
            self.load_index()
            return
        for name in names - set(self.index.files):
            data = self.storage.load(Kind.INDEX, name)
            self.index.add_file(name, decode_index(data, self.sealer, name))

    def _ensure_index(self) -> None:
        if not self._index_loaded:
            with self._lock:
                if not self._index_loaded:
                    self.load_index()

    # -- writing ---------------------------------------------------------------------------

    def _known(self, bid: str) -> bool:
        return bid in self.index or bid in self._pending or bid in self._flushing

    def seal_blob(self, data: bytes | memoryview) -> tuple[str, bytes | None]:
        """Id and sealed bytes of a blob, ``None`` if already stored. Safe in worker threads."""
        bid = blob_id(self.keys.hash_key, data)
        if self._known(bid):
            return bid, None
        return bid, self.sealer.seal(data, bid.encode())

    def add_sealed(self, bid: str, sealed: bytes | None, raw_length: int) -> None:
        """Queue a sealed blob into the open pack (main thread only)."""
        if sealed is None or self._known(bid):
            self.stats.blobs_known += 1
            return
        self._pack.add(bid, sealed, raw_length)
        self._pending.add(bid)
        self.stats.blobs_new += 1
        self.stats.raw_bytes_new += raw_length
        if self._pack.size >= PACK_TARGET:
            self._flush_async()

    def put_blob(self, data: bytes | memoryview) -> str:
        self._ensure_index()
        bid, sealed = self.seal_blob(data)
        self.add_sealed(bid, sealed, len(data))
        return bid

    def flush(self) -> None:
        """Store the open pack and wait until every pack handed to the writer is stored with
        its index: after this, everything added is durable (design §3 write order)."""
        self._flush_async()
        self._reap(block=True)

    def _flush_async(self) -> None:
        """Hand the open pack to the writer thread, so reading and sealing go on while it is
        written, fsynced and indexed. At most WRITES_IN_FLIGHT packs wait (memory bound)."""
        self._reap(block=False)
        if not len(self._pack):
            return
        pack, self._pack = self._pack, PackWriter()
        ids, self._pending = self._pending, set()
        with self._lock:
            self._flushing = self._flushing | ids
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="rehost-pack-writer")
        while len(self._writes) >= WRITES_IN_FLIGHT:
            self._writes.popleft().result()
        self._writes.append(self._writer.submit(self._store_pack, pack, ids))

    def _store_pack(self, pack: PackWriter, ids: set[str]) -> None:
        """The pack, then its index file (design §3); then its blobs are in the index."""
        try:
            pack_id, data = pack.finish(self.sealer)
            self._save_addressed(Kind.DATA, pack_id, data)
            index_id, index_data = encode_index([(pack_id, pack.entries)], self.sealer)
            self._save_addressed(Kind.INDEX, index_id, index_data)
            with self._lock:
                self.index.add_file(index_id, [(pack_id, pack.entries)])
                self.stats.stored_bytes += len(data) + len(index_data)
        finally:  # stored: indexed now; failed: unknown again, so a retry stores them
            with self._lock:
                self._flushing = self._flushing - ids

    def _reap(self, *, block: bool) -> None:
        """Collect finished writes; a writer's error is raised here, in the caller's thread."""
        while self._writes and (block or self._writes[0].done()):
            self._writes.popleft().result()

    def _save_addressed(self, kind: Kind, name: str, data: bytes) -> None:
        """Save a content-addressed object. If it exists already, it holds these very bytes
        (its name is their SHA-256): a cycle resumed after a kill -9 between a pack and its
        index rebuilds the same pack, and that is success, not an error."""
        try:
            self.storage.save(kind, name, data)
        except AlreadyExists:
            if self.storage.stat(kind, name).size != len(data):
                raise IntegrityError(f"{kind.value}/{name[:12]} exists with other content") from None

    def save_point(self, point: RecoveryPoint) -> RecoveryPoint:
        """Commit a point: flush its blobs first, then write the manifest (atomic)."""
        self.flush()
        point_id, data = encode_point(replace(point, id=""), self.sealer)
        self._save_addressed(Kind.POINTS, point_id, data)
        self.stats.stored_bytes += len(data)
        return replace(point, id=point_id)

    # -- reading ---------------------------------------------------------------------------

    def list_points(self, machine: str | None = None) -> list[RecoveryPoint]:
        """Points oldest first; a point rewritten by prune hides the one it replaces."""
        points = [self.load_point_exact(o.name) for o in self.storage.list(Kind.POINTS)]
        if machine is not None:
            points = [p for p in points if p.machine == machine]
        replaced = {p.replaces for p in points if p.replaces}
        return sorted((p for p in points if p.id not in replaced), key=lambda p: (p.time, p.sequence))

    def load_point_exact(self, point_id: str) -> RecoveryPoint:
        """A point by full id; decoded once per process (points are immutable)."""
        cached = self._points.get(point_id)
        if cached is not None:
            return cached
        try:
            data = self.storage.load(Kind.POINTS, point_id)
        except ObjectNotFound:
            raise NotFound(f"recovery point {point_id[:12]} does not exist") from None
        point = decode_point(data, self.sealer, point_id)
        self._points[point_id] = point
        return point

    def forget_point(self, point_id: str) -> None:
        """Remove a point's manifest (prune only) and its decoded copy."""
        self.storage.remove(Kind.POINTS, point_id)
        self._points.pop(point_id, None)
        self._maps = {k: v for k, v in self._maps.items() if k[0] != point_id}

    def resolve_map(self, point: RecoveryPoint, disk: int) -> list[MapEntry]:
        """The full map of one disk of a point: its own, or its base's overlaid by its delta."""
        key = (point.id, disk)
        cached = self._maps.get(key)
        if cached is not None:
            return cached
        dmap = _disk(point, disk)
        if dmap.base is None:
            resolved = dmap.entries
        else:
            try:
                base = self.load_point_exact(dmap.base)
            except NotFound:
                raise IntegrityError(
                    f"recovery point {point.short_id} needs base point {dmap.base[:12]}, which is missing"
                ) from None
            bmap = _disk(base, disk)
            if bmap.base is not None or bmap.size != dmap.size:
                raise IntegrityError(f"base point {base.short_id} of {point.short_id} has no full map")
            resolved = overlay(bmap.entries, dmap.entries)
        self._maps[key] = resolved
        return resolved

    def read_blob(self, bid: str) -> bytes:
        """A blob's plaintext, verified against its id; raises IntegrityError, never lies."""
        with self._lock:
            cached = self._blob_cache.get(bid)
            if cached is not None:
                self._blob_cache.move_to_end(bid)
                return cached
        self._ensure_index()
        loc = self.index.get(bid)
        if loc is None:
            raise IntegrityError(f"blob {bid[:12]} is not in the index (missing index or pack)")
        try:
            sealed = self.storage.load(Kind.DATA, loc.pack, loc.offset, loc.length)
        except ObjectNotFound:
            raise IntegrityError(f"pack {loc.pack[:12]} holding blob {bid[:12]} is missing") from None
        if len(sealed) != loc.length:
            raise IntegrityError(f"pack {loc.pack[:12]} is truncated (blob {bid[:12]})")
        data = self.sealer.open(sealed, bid.encode(), f"blob {bid[:12]} in pack {loc.pack[:12]}")
        if len(data) != loc.raw_length or blob_id(self.keys.hash_key, data) != bid:
            raise IntegrityError(f"blob {bid[:12]} in pack {loc.pack[:12]} is damaged")
        with self._lock:
            self._blob_cache[bid] = data
            if len(self._blob_cache) > 8:
                self._blob_cache.popitem(last=False)
        return data

    def iter_disk(
        self, point: RecoveryPoint, disk: int, chunk: int = CHUNK_SIZE
    ) -> Iterator[tuple[int, int, bytes | None]]:
        """(offset, length, data-or-None-for-zeros) covering the whole disk in order."""
        size = _disk(point, disk).size
        pos = 0
        for e in self.resolve_map(point, disk):
            if e.offset > pos:
                yield from _zeros(pos, e.offset, chunk)
            if e.blob is None:  # the format allows explicit zero entries
                yield from _zeros(e.offset, e.end, chunk)
                pos = e.end
                continue
            data = self.read_blob(e.blob)
            piece = data[e.blob_offset : e.blob_offset + e.length]
            if len(piece) != e.length:
                raise IntegrityError(f"blob {str(e.blob)[:12]} is shorter than the map says")
            yield e.offset, e.length, piece
            pos = e.end
        if pos < size:
            yield from _zeros(pos, size, chunk)


def _zeros(start: int, end: int, chunk: int) -> Iterator[tuple[int, int, None]]:
    for off in range(start, end, chunk):
        yield off, min(chunk, end - off), None


def _disk(point: RecoveryPoint, index: int) -> DiskMap:
    for d in point.disks:
        if d.index == index:
            return d
    raise NotFound(f"recovery point {point.short_id} has no disk {index}")

