"""The repository facade: blobs in, recovery points out (design §2-§3).

It keeps the write order: a pack is stored, then its index file, and a recovery point only
after every blob it references is in a stored pack and index.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from rehost.errors import AlreadyExists, IntegrityError, NotFound, ObjectNotFound, UsageError
from rehost.repository.crypto import KeyMaterial, Sealer, blob_id, unwrap_keys, wrap_keys
from rehost.repository.index import Index, IndexedPack, columns_of, decode_index
from rehost.repository.manifest import (
    DiskMap,
    MapEntry,
    RecoveryPoint,
    decode_point,
    overlay,
)
from rehost.repository.pack import BlobEntry
from rehost.repository.storage.base import Kind, Storage
from rehost.repository.writer import Writer, WriteStats

FORMAT_VERSION = 1
BLOCK_SIZE = 4096
CHUNK_SIZE = 1024 * 1024


class Repository:
    """An opened repository. Many writers at once, in threads and processes (each cycle has
    its own ``Writer``); only prune's delete phase must run alone (the vault's leases)."""

    def __init__(self, storage: Storage, config: dict[str, object], keys: KeyMaterial) -> None:
        self.storage = storage
        self.config = config
        self.keys = keys
        self._local = threading.local()
        self.index = Index()
        self._index_loaded = False
        self._default_writer: Writer | None = None
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
            if self._default_writer is not None:
                self._default_writer.close()
        finally:
            self.storage.close()

    # -- index -----------------------------------------------------------------------------

    def load_index(self, *, strict: bool = True) -> list[str]:
        """Read every index file; returns problems found (raised instead when ``strict``)."""
        problems: list[str] = []
        index = Index()
        with self._lock:  # writers of this process add to the index: not while it is replaced
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
            try:
                data = self.storage.load(Kind.INDEX, name)
            except ObjectNotFound:  # consolidated by a prune since the listing
                self.load_index()
                return
            decoded = decode_index(data, self.sealer, name)
            with self._lock:
                self.index.add_file(name, decoded)

    def _ensure_index(self) -> None:
        if not self._index_loaded:
            self.load_index()

    # -- writing ---------------------------------------------------------------------------

    def writer(self, storage: Storage | None = None) -> Writer:
        """A writer of its own (its open pack, its statistics, optionally a storage wrapper
        such as a bandwidth limit): several cycles write at once, each through its own."""
        return Writer(self, storage or self.storage)

    @property
    def _default(self) -> Writer:
        if self._default_writer is None:
            self._default_writer = Writer(self, self.storage)
        return self._default_writer

    @property
    def stats(self) -> WriteStats:
        return self._default.stats

    def seal_blob(self, data: bytes | memoryview) -> tuple[str, bytes | None]:
        return self._default.seal_blob(data)

    def add_sealed(self, bid: str, sealed: bytes | None, raw_length: int) -> None:
        self._default.add_sealed(bid, sealed, raw_length)

    def put_blob(self, data: bytes | memoryview) -> str:
        return self._default.put_blob(data)

    def flush(self) -> None:
        if self._default_writer is not None:
            self._default_writer.flush()

    def save_point(self, point: RecoveryPoint) -> RecoveryPoint:
        return self._default.save_point(point)

    def _index_packs(self, index_id: str, packs: Sequence[tuple[str, list[BlobEntry], bool]]) -> None:
        """A writer stored packs and their index file: their blobs are known from now on.
        ``packs``: (pack id, entries, deferred) of each."""
        with self._lock:
            self.index.add_file(index_id, [IndexedPack(pid, columns_of(entries), deferred)
                                           for pid, entries, deferred in packs])

    def save_addressed(self, storage: Storage, kind: Kind, name: str, data: bytes | memoryview) -> None:
        """Save a content-addressed object. If it exists already, it holds these very bytes
        (its name is their hash): a cycle resumed after a kill -9 between a pack and its
        index, or two writers storing the same blobs, rebuild the same object, and that is
        success, not an error."""
        try:
            storage.save(kind, name, data)
        except AlreadyExists:
            if self.storage.stat(kind, name).size != len(data):
                raise IntegrityError(f"{kind.value}/{name[:12]} exists with other content") from None

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
        if loc is None:  # written by another process since this one loaded the index?
            self.refresh_index()
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

