"""``prune``: the only code that deletes (design §3). Each step is safe to interrupt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from rehost.repository.index import encode_index
from rehost.repository.manifest import DiskMap, RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind
from rehost.repository.writer import Writer

#: Repack a pack when more than this share of its bytes is no longer referenced.
REPACK_DEAD_SHARE = 0.2


@dataclass
class PruneReport:
    points_removed: int = 0
    points_rewritten: int = 0
    packs_removed: int = 0
    packs_repacked: int = 0
    bytes_freed: int = 0
    temp_files_removed: int = 0


def prune(repo: Repository, forget: Iterable[str] = (), reading: Iterable[str] = ()) -> PruneReport:
    """Forget the given points, then delete every pack no remaining point needs.

    ``reading``: points someone is reading right now (a test failover's point server, an
    export): they are not forgotten, and the packs holding their blobs are neither deleted
    nor repacked, because a reader keeps blob locations from the index it loaded.
    """
    report = PruneReport()
    repo.load_index()
    with repo.writer() as writer:
        _prune(repo, writer, set(forget), set(reading), report)
    repo.load_index()
    return report


def _prune(
    repo: Repository, writer: Writer, forget: set[str], reading: set[str], report: PruneReport
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
    for pack_id, entries in packs.items():
        live = [e for e in entries if e.id in used]
        dead_bytes = sum(e.length for e in entries if e.id not in used)
        total = sum(e.length for e in entries) or 1
        if any(e.id in pinned for e in entries):
            keep_packs[pack_id] = entries  # a reader may fetch from it by its old location
        elif not live:
            drop_packs.append(pack_id)
        elif dead_bytes / total > REPACK_DEAD_SHARE:
            for e in live:  # sealed bytes are position-independent: copy without re-sealing
                sealed = repo.storage.load(Kind.DATA, pack_id, e.offset, e.length)
                repo.index.blobs.pop(e.id, None)
                writer.add_sealed(e.id, sealed, e.raw_length)
            drop_packs.append(pack_id)
            report.packs_repacked += 1
        else:
            keep_packs[pack_id] = entries
    writer.flush()
    keep_packs.update({pid: entries for pid, entries in repo.index.packs.items()  # repacked ones too
                       if pid not in keep_packs and pid not in drop_packs})
    # one consolidated index first, then old index files, then the packs themselves
    old_files = list(repo.index.files)
    index_id, data = encode_index(sorted(keep_packs.items()), repo.sealer)
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


def _used_blobs(points: Iterable[RecoveryPoint]) -> set[str]:
    return {e.blob for p in points for d in p.disks for e in d.entries if e.blob}
