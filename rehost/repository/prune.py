"""``prune``: the only code that deletes (design §3). Each step is safe to interrupt.

It also compresses the packs an initial copy stored uncompressed (``Writer.compress_later``):
moving blobs to new packs and deleting the old ones is what a repack does anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from rehost.repository.index import encode_index
from rehost.repository.manifest import DiskMap, RecoveryPoint
from rehost.repository.pack import BlobEntry
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind
from rehost.repository.writer import Writer

#: a deferred pack compressed: its id, its live entries, what to add for them (id, sealed,
#: length), and whether any of them shrank
_Compressed = tuple[str, list[BlobEntry], list[tuple[str, bytes | None, int]], bool]
#: Repack a pack when more than this share of its bytes is no longer referenced.
REPACK_DEAD_SHARE = 0.2


@dataclass
class PruneReport:
    points_removed: int = 0
    points_rewritten: int = 0
    packs_removed: int = 0
    packs_repacked: int = 0
    packs_compressed: int = 0  # deferred packs (an initial copy's) compressed into new ones
    packs_left_as_stored: int = 0  # deferred packs none of whose blobs shrank: kept as they are
    bytes_freed: int = 0
    temp_files_removed: int = 0


def prune(repo: Repository, forget: Iterable[str] = (), reading: Iterable[str] = (), *,
          compress: int | None = None) -> PruneReport:
    """Forget the given points, then delete every pack no remaining point needs.

    ``reading``: points someone is reading right now (a test failover's point server, an
    export): they are not forgotten, and the packs holding their blobs are neither deleted
    nor repacked, because a reader keeps blob locations from the index it loaded.
    ``compress``: compress at most this many deferred packs (None: all). Cycles wait while a
    prune runs, so ``rehost serve`` compresses a large initial copy a slice at a time.
    """
    report = PruneReport()
    repo.load_index()
    with repo.writer() as writer:
        _prune(repo, writer, set(forget), set(reading), report, compress)
    repo.load_index()
    return report


def _prune(
    repo: Repository, writer: Writer, forget: set[str], reading: set[str], report: PruneReport,
    compress: int | None,
) -> None:
    raw = {o.name: repo.load_point_exact(o.name) for o in repo.storage.list(Kind.POINTS)}
    # a point rewritten by an earlier prune holds the blobs of the one a reader opened
    read = {p.id for p in raw.values() if p.id in reading or p.replaces in reading}
    forget -= read
    pinned = _used_blobs(raw[pid] for pid in read)
    replaced = {p.replaces for p in raw.values() if p.replaces and p.replaces in raw}
    # 1. rewrite kept points whose base is going away as full maps
    for p in list(raw.values()):
        if p.id in forget or p.id in replaced:
            continue
        if any(d.base in forget for d in p.disks):
            full = [DiskMap(d.index, d.size, None, repo.resolve_map(p, d.index)) for d in p.disks]
            new = writer.save_point(replace(p, disks=full, replaces=p.id, id=""))
            raw[new.id] = new
            replaced.add(p.id)
            report.points_rewritten += 1
    # 2. remove forgotten and replaced manifests
    for pid in (forget | replaced) & raw.keys():
        repo.forget_point(pid)
        del raw[pid]
        report.points_removed += 1
    # 3. sweep packs
    used = _used_blobs(raw.values())
    stored = {o.name: o.size for o in repo.storage.list(Kind.DATA)}
    keep_packs: dict[str, list] = {}  # type: ignore[type-arg]
    drop_packs: list[str] = []
    packs = repo.index.packs
    deferred: list[tuple[str, list[BlobEntry]]] = []
    for pack_id, entries in packs.items():
        live = [e for e in entries if e.id in used]
        dead_bytes = sum(e.length for e in entries if e.id not in used)
        total = sum(e.length for e in entries) or 1
        if any(e.id in pinned for e in entries):
            keep_packs[pack_id] = entries  # a reader may fetch from it by its old location
        elif not live:
            drop_packs.append(pack_id)
        elif pack_id in repo.index.deferred and (compress is None or len(deferred) < compress):
            deferred.append((pack_id, live))
        elif pack_id in repo.index.deferred:
            keep_packs[pack_id] = entries  # the next prune's
        elif dead_bytes / total > REPACK_DEAD_SHARE:
            for e in live:  # sealed bytes are position-independent: copy without re-sealing
                sealed = repo.storage.load(Kind.DATA, pack_id, e.offset, e.length)
                repo.index.blobs.pop(e.id, None)
                writer.add_sealed(e.id, sealed, e.raw_length)
            drop_packs.append(pack_id)
            report.packs_repacked += 1
        else:
            keep_packs[pack_id] = entries
    for pack_id, live, moved, shrank in _compressed(repo, deferred):
        if not shrank and len(live) == len(packs[pack_id]):
            # nothing to gain (random data): the pack stays, no longer due. Moving it would
            # write the very same bytes under the very same id, which the drop below deletes
            keep_packs[pack_id] = packs[pack_id]
            repo.index.deferred.discard(pack_id)
            report.packs_left_as_stored += 1
            continue
        for e in live:
            repo.index.blobs.pop(e.id, None)
        writer.add_sealed_many(moved)
        drop_packs.append(pack_id)
        report.packs_compressed += 1
    writer.flush()
    # a pack written again here is kept whatever dropped its namesake: pack ids are content
    # addresses, so moving blobs can recreate a pack byte for byte (test_prune: same id)
    drop_packs = [pid for pid in drop_packs if pid not in writer.packs_stored]
    repo.index.deferred -= writer.packs_stored  # this writer compresses: what it stored is done
    keep_packs.update({pid: entries for pid, entries in repo.index.packs.items()  # repacked ones too
                       if pid not in keep_packs and pid not in drop_packs})
    # one consolidated index first, then old index files, then the packs themselves
    old_files = list(repo.index.files)
    index_id, data = encode_index(sorted(keep_packs.items()), repo.sealer,
                                  repo.index.deferred & keep_packs.keys())  # those left stay due
    if index_id not in repo.index.files:
        repo.storage.save(Kind.INDEX, index_id, data)
    for name in old_files:
        if name != index_id:
            repo.storage.remove(Kind.INDEX, name)
    for pack_id in [*drop_packs, *(stored.keys() - repo.index.pack_ids)]:
        if pack_id in stored:
            repo.storage.remove(Kind.DATA, pack_id)
            report.bytes_freed += stored[pack_id]
            report.packs_removed += 1
    cleaner = getattr(repo.storage, "remove_stale_temp_files", None)
    if cleaner is not None:
        report.temp_files_removed = int(cleaner(0))


def _compressed(
    repo: Repository, packs: list[tuple[str, list[BlobEntry]]]
) -> Iterator[_Compressed]:
    """Each deferred pack's live blobs compressed, as (pack id, its live entries, what to add):
    two packs at a time (sealing gives the GIL up). A blob that does not shrink keeps the
    bytes it has, so no pack is compressed twice."""

    def compress(item: tuple[str, list[BlobEntry]]) -> _Compressed:
        pack_id, live = item
        pack = repo.storage.load(Kind.DATA, pack_id)
        stored = [pack[e.offset : e.offset + e.length] for e in live]
        aads = [e.id.encode() for e in live]
        plain = [repo.sealer.open(s, a, f"blob {e.id[:12]}")
                 for s, a, e in zip(stored, aads, live, strict=True)]
        packed = repo.sealer.seal_many(plain, aads)
        kept = [new if len(new) < len(old) else old for old, new in zip(stored, packed, strict=True)]
        shrank = any(k is not old for k, old in zip(kept, stored, strict=True))
        return pack_id, live, [(e.id, k, e.raw_length) for e, k in zip(live, kept, strict=True)], shrank

    if not packs:
        return
    with ThreadPoolExecutor(2, thread_name_prefix="rehost-compress") as pool:
        inflight: deque[Future[_Compressed]] = deque()
        for item in packs:  # a few packs in memory at a time, not all of them
            inflight.append(pool.submit(compress, item))
            if len(inflight) > 2:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()


def _used_blobs(points: Iterable[RecoveryPoint]) -> set[str]:
    return {e.blob for p in points for d in p.disks for e in d.entries if e.blob}
