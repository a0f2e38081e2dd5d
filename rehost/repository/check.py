"""``check``: verify every reference, and with ``read_data`` every byte (design §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rehost.errors import IntegrityError, ObjectNotFound
from rehost.repository.crypto import blob_id
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.pack import BlobEntry, names_pack, read_trailer
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    points: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    repo: Repository, *, read_data: bool = False, progress: Callable[[int], None] | None = None
) -> CheckReport:
    report = CheckReport()
    report.errors += repo.load_index(strict=False)
    stored = {o.name: o.size for o in repo.storage.list(Kind.DATA)}
    bad_blobs: dict[str, str] = {}  # blob id -> why

    for pack_id, entries in repo.index.packs.items():
        report.packs += 1
        report.blobs += len(entries)
        size = stored.get(pack_id)
        if size is None:
            _mark(bad_blobs, entries, f"pack {pack_id[:12]} is missing")
            report.errors.append(f"pack {pack_id[:12]} is in the index but missing from storage")
            continue
        need = max((e.offset + e.length for e in entries), default=0)
        if size < need:
            _mark(bad_blobs, entries, f"pack {pack_id[:12]} is truncated")
            report.errors.append(f"pack {pack_id[:12]} is truncated: {size} bytes, index needs {need}")
            continue
        if read_data:
            _read_pack(repo, pack_id, entries, report, bad_blobs)
            if progress:
                progress(size)
    for name in stored.keys() - repo.index.pack_ids:
        report.warnings.append(f"pack {name[:12]} is not referenced by any index (prune removes it)")

    points = _load_points(repo, report)
    ids = {p.id for p in points}
    for p in points:
        report.points += 1
        for d in p.disks:
            if d.base is not None and d.base not in ids:
                report.errors.append(
                    f"point {p.short_id}: disk {d.index} needs base point {d.base[:12]}, which is missing"
                )
            missing = {e.blob for e in d.entries if e.blob and e.blob not in repo.index}
            damaged = {e.blob: bad_blobs[e.blob] for e in d.entries if e.blob in bad_blobs}
            if missing:
                report.errors.append(
                    f"point {p.short_id}: disk {d.index} references {len(missing)} blob(s) not in any "
                    f"index, e.g. {sorted(missing)[0][:12]}"
                )
            if damaged:
                first = next(iter(damaged.values()))
                report.errors.append(
                    f"point {p.short_id}: disk {d.index} has {len(damaged)} damaged blob(s) ({first})"
                )
    return report


def _mark(bad: dict[str, str], entries: list[BlobEntry], why: str) -> None:
    for e in entries:
        bad[e.id] = why


def _read_pack(
    repo: Repository, pack_id: str, entries: list[BlobEntry], report: CheckReport, bad_blobs: dict[str, str]
) -> None:
    try:
        data = repo.storage.load(Kind.DATA, pack_id)
    except ObjectNotFound:
        report.errors.append(f"pack {pack_id[:12]} vanished during check")
        return
    report.bytes_read += len(data)
    if not names_pack(pack_id, data):
        report.errors.append(f"pack {pack_id[:12]} is damaged: its content does not match its name")
    try:
        trailer = {e.id for e in read_trailer(data, repo.sealer, pack_id[:12])}
        if not {e.id for e in entries} <= trailer:
            report.errors.append(f"pack {pack_id[:12]}: index lists blobs its trailer does not")
    except IntegrityError as err:
        report.errors.append(str(err))
    for e in entries:
        try:
            plain = repo.sealer.open(data[e.offset : e.offset + e.length], e.id.encode(), f"blob {e.id[:12]}")
            if len(plain) != e.raw_length or blob_id(repo.keys.hash_key, plain) != e.id:
                raise IntegrityError(f"blob {e.id[:12]} in pack {pack_id[:12]} is damaged")
        except IntegrityError as err:
            bad_blobs[e.id] = f"pack {pack_id[:12]} is damaged"
            report.errors.append(f"{err} (pack {pack_id[:12]})")


def _load_points(repo: Repository, report: CheckReport) -> list[RecoveryPoint]:
    points = []
    for info in repo.storage.list(Kind.POINTS):
        try:
            points.append(repo.load_point_exact(info.name))
        except IntegrityError as e:
            report.errors.append(str(e))
    return points
