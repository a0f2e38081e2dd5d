"""Keep one disk's replica page blob in sync with the recovery points.

The blob is the disk in Azure's fixed VHD layout (``vhd``): data padded to a whole MiB, then
the footer, written once when the blob is made. A sync from the point the blob holds to a
newer one writes only the pages that changed (``plan``), several requests in flight, then
takes a blob snapshot whose metadata names the point (``rehost_point``): failover makes a
managed disk from that snapshot without uploading anything.

State lives in the blob's metadata, so any host can pick it up:
- ``rehost_point``: the point the blob holds entirely (set only when a sync finished);
- during a sync, ``rehost_syncing`` (the target point), ``rehost_from`` (a point id, ``none``
  for a new all-zero blob, ``unknown`` when the content cannot be trusted) and
  ``rehost_sync`` (a random id of this attempt).

Resume: a local journal (``<journal_dir>/<blob hash>.jsonl``) records each request that
Azure acknowledged, under the attempt's id. A later sync that finds ``rehost_syncing`` on the
blob and a journal with the same attempt id skips what landed and finishes the same target
(then goes on to the newer point, if asked). Why a journal and not blob metadata: marking
progress in the blob costs a request per mark and serialises the parallel writes; the
journal costs nothing remote, a kill -9 loses at most the requests in flight (rewritten,
page writes are idempotent), and a sync resumed on another host (no journal) is still
correct: it rewrites the interrupted delta. A target point that was pruned meanwhile makes
the next sync rewrite the whole disk (data written, zero ranges cleared).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rehost.errors import NotFound
from rehost.repository.manifest import MapEntry, RecoveryPoint
from rehost.repository.point_reader import PointReader
from rehost.repository.repository import Repository
from rehost.targets.azure.blob import PageBlob
from rehost.targets.azure.plan import PAGE, PageRequest, page_requests
from rehost.targets.azure.vhd import FOOTER_SIZE, make_footer, padded_size

NONE, UNKNOWN = "none", "unknown"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SyncReport:
    """What one ``sync_disk`` did. Holds no secret (the blob URL is without its query)."""

    blob: str
    point: str
    snapshot: str
    #: the point the blob held before (None: a new blob, or content that had to be rewritten)
    parent: str | None
    bytes_written: int
    pages_written: int
    pages_cleared: int
    requests: int
    retries: int
    #: page requests an interrupted attempt had landed, not sent again
    resumed_skipped: int
    seconds: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Journal:
    """Which requests of one sync attempt Azure acknowledged (one JSON line each)."""

    def __init__(self, folder: Path, blob_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (hashlib.sha256(blob_url.encode()).hexdigest()[:24] + ".jsonl")
        self._f: Any = None

    def landed(self, attempt: str) -> set[tuple[int, int, bool]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return set()
        done: set[tuple[int, int, bool]] = set()
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if n == 0 and rec.get("attempt") != attempt:
                return set()
            if n > 0:
                done.add((int(rec["o"]), int(rec["n"]), bool(rec["c"])))
        return done

    def start(self, attempt: str, keep: bool) -> None:
        self._f = open(self.path, "a" if keep else "w", buffering=1)  # noqa: SIM115 - line-buffered
        if not keep:
            self._f.write(json.dumps({"attempt": attempt}) + "\n")

    def record(self, r: PageRequest) -> None:
        self._f.write(json.dumps({"o": r.offset, "n": r.length, "c": r.clear}) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class _Tally:
    bytes_written: int = 0
    pages_written: int = 0
    pages_cleared: int = 0
    skipped: int = 0


def _load(repo: Repository, point_id: str) -> RecoveryPoint | None:
    try:
        return repo.load_point_exact(point_id)
    except NotFound:
        return None


def _disk_size(point: RecoveryPoint, disk: int) -> int:
    for d in point.disks:
        if d.index == disk:
            return d.size
    raise NotFound(f"recovery point {point.short_id} has no disk {disk}")


def sync_disk(
    repo: Repository,
    point: RecoveryPoint,
    disk: int,
    blob: PageBlob,
    *,
    last: RecoveryPoint | None,
    journal_dir: Path,
    workers: int = 4,
    progress: Progress | None = None,
) -> SyncReport:
    """Make ``blob`` hold disk ``disk`` of ``point`` and snapshot it.

    ``last`` is the point the caller believes the blob holds; the blob's own record
    (``rehost_point``) wins, and a disagreement is told in the report's ``note``. Running it
    again for the same point writes nothing.
    """
    t0 = time.monotonic()
    req0, retry0 = blob.requests, blob.retries
    tally = _Tally()
    note = ""
    parent: str | None = None
    while True:
        state = blob.state()
        size = _disk_size(point, disk)
        held = state.metadata.get("rehost_point") if state else None
        if state is not None and "rehost_syncing" not in state.metadata and held == point.id:
            snap = _snapshot_of(blob, point.id)
            break
        if not note and last is not None and held is not None and held != last.id:
            note = f"the blob held point {held[:12]}, not {last.short_id} as the caller believed"
        target, source, attempt = _begin(repo, point, disk, blob, state, size)
        parent = source if source not in (NONE, UNKNOWN) else None
        _run(repo, target, disk, blob, source, attempt, journal_dir, workers, tally, progress)
        snap = _finish(blob, target, disk)
        _Journal(journal_dir, blob.url).discard()
        if target.id == point.id:
            break
        note = f"first finished the interrupted sync to {target.short_id}"
    return SyncReport(
        blob=blob.url, point=point.id, snapshot=snap, parent=parent,
        bytes_written=tally.bytes_written, pages_written=tally.pages_written,
        pages_cleared=tally.pages_cleared, requests=blob.requests - req0, retries=blob.retries - retry0,
        resumed_skipped=tally.skipped, seconds=round(time.monotonic() - t0, 3), note=note,
    )


def _begin(
    repo: Repository, point: RecoveryPoint, disk: int, blob: PageBlob, state: Any, size: int
) -> tuple[RecoveryPoint, str, str]:
    """Decide (target point, source, attempt id) and mark the blob as syncing."""
    md: dict[str, str] = dict(state.metadata) if state else {}
    if state is not None and "rehost_syncing" in md:  # an interrupted attempt: finish it
        pending = _load(repo, md["rehost_syncing"])
        source = md.get("rehost_from", UNKNOWN)
        if (pending is not None and (source in (NONE, UNKNOWN) or _load(repo, source) is not None)
                and str(_disk_size(pending, disk)) == md.get("rehost_size")):
            _fit(blob, state.size, _disk_size(pending, disk))
            return pending, source, md.get("rehost_sync", "")
    attempt = secrets.token_hex(8)
    if state is None:
        blob.create(padded_size(size) + FOOTER_SIZE, _syncing(point, NONE, attempt, size))
        return point, NONE, attempt
    held = md.get("rehost_point")
    base = _load(repo, held) if held and "rehost_syncing" not in md else None
    source = held if held and base is not None and _disk_size(base, disk) == size else UNKNOWN
    blob.set_metadata(_syncing(point, source, attempt, size))
    _fit(blob, state.size, size)
    return point, source, attempt


def _fit(blob: PageBlob, blob_size: int, size: int) -> None:
    if blob_size != padded_size(size) + FOOTER_SIZE:
        blob.resize(padded_size(size) + FOOTER_SIZE)


def _syncing(point: RecoveryPoint, source: str, attempt: str, size: int) -> dict[str, str]:
    return {"rehost_syncing": point.id, "rehost_from": source, "rehost_sync": attempt,
            "rehost_size": str(size)}


def _run(
    repo: Repository, target: RecoveryPoint, disk: int, blob: PageBlob, source: str, attempt: str,
    journal_dir: Path, workers: int, tally: _Tally, progress: Progress | None,
) -> None:
    size = _disk_size(target, disk)
    old: list[MapEntry] | None
    old = [] if source == NONE else None if source == UNKNOWN else repo.resolve_map(_need(repo, source), disk)
    requests = page_requests(old, repo.resolve_map(target, disk), size)
    padded = padded_size(size)
    if source in (NONE, UNKNOWN):
        requests.append(PageRequest(padded, FOOTER_SIZE, False))  # the footer, written once
    journal = _Journal(journal_dir, blob.url)
    landed = journal.landed(attempt)
    journal.start(attempt, keep=bool(landed))
    todo = [r for r in requests if (r.offset, r.length, r.clear) not in landed]
    tally.skipped += len(requests) - len(todo)
    reader = PointReader(repo, target, disk)
    total = sum(r.length for r in todo)
    done = 0
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="pageblob") as pool:
            inflight: dict[Future[tuple[int, int]], PageRequest] = {}
            for r in todo:
                r.check()
                while len(inflight) >= 2 * workers:
                    done += _collect(inflight, journal, tally)
                inflight[pool.submit(_send, blob, reader, r, padded, size, source == NONE)] = r
                if progress:
                    progress(done, total)
            while inflight:
                done += _collect(inflight, journal, tally)
    finally:
        journal.close()
    if progress:
        progress(total, total)


def _need(repo: Repository, point_id: str) -> RecoveryPoint:
    p = _load(repo, point_id)
    if p is None:
        raise NotFound(f"recovery point {point_id[:12]} the replica was synced from is gone")
    return p


def _collect(inflight: dict[Future[tuple[int, int]], PageRequest], journal: _Journal, tally: _Tally) -> int:
    """Wait for at least one request and journal what landed. On a failure, wait for the
    others in flight (what landed stays journaled), then raise the first error."""
    finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
    error: BaseException | None = None
    n = 0
    for f in finished:
        r = inflight.pop(f)
        if f.exception() is not None:
            error = error or f.exception()
            continue
        n += _landed(r, f.result(), journal, tally)
    if error is not None:
        for f, r in list(inflight.items()):
            with contextlib.suppress(Exception):
                _landed(r, f.result(), journal, tally)
        inflight.clear()
        raise error
    return n


def _landed(r: PageRequest, result: tuple[int, int], journal: _Journal, tally: _Tally) -> int:
    journal.record(r)
    written, cleared = result
    tally.bytes_written += written
    tally.pages_written += written // PAGE
    tally.pages_cleared += cleared // PAGE
    return r.length


def _send(
    blob: PageBlob, reader: PointReader, r: PageRequest, padded: int, size: int, fresh: bool
) -> tuple[int, int]:
    """One request; returns (bytes written, bytes cleared)."""
    if r.clear:
        blob.clear(r.offset, r.length)
        return 0, r.length
    if r.offset >= padded:
        data = make_footer(size)
    else:
        data = reader.pread(r.offset, min(r.length, size - r.offset)).ljust(r.length, b"\0")
    if not any(data):  # the point reads as zeros here: clear, or nothing on a new blob
        if fresh:
            return 0, 0
        blob.clear(r.offset, r.length)
        return 0, r.length
    blob.put(r.offset, data)
    return len(data), 0


def _finish(blob: PageBlob, target: RecoveryPoint, disk: int) -> str:
    size = _disk_size(target, disk)
    md = {"rehost_point": target.id, "rehost_size": str(size)}
    blob.set_metadata(md)
    return blob.snapshot(md)


def point_snapshots(blob: PageBlob) -> dict[str, str]:
    """point id -> the blob snapshot holding it (what failover makes a managed disk from)."""
    out: dict[str, str] = {}
    for snap, md in sorted(blob.snapshots().items()):
        if "rehost_point" in md:
            out[md["rehost_point"]] = snap
    return out


def forget_snapshots(blob: PageBlob, keep: Iterable[str]) -> list[str]:
    """Delete the snapshots of points not in ``keep`` (retention removed them from the
    repository); returns the point ids forgotten. The base blob is never touched."""
    keep = set(keep)
    gone = []
    for snap, md in blob.snapshots().items():
        point = md.get("rehost_point")
        if point not in keep:
            blob.delete_snapshot(snap)
            gone.append(point or snap)
    return gone


def _snapshot_of(blob: PageBlob, point_id: str) -> str:
    """The snapshot holding ``point_id``; taken now if a kill came between the metadata and
    the snapshot."""
    for snap, md in sorted(blob.snapshots().items(), reverse=True):
        if md.get("rehost_point") == point_id:
            return snap
    return blob.snapshot({"rehost_point": point_id})
