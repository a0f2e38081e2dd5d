"""Point records: what the database knows of the repository's recovery points (design §6,
"Point records").

The repository's manifests are the only truth about points, but decoding every manifest of
every machine on each scheduler tick and each item list makes their cost grow with history.
So the vault keeps a copy of each point's header (``point_records``: id, machine, time,
consistency, sequence, disk sizes) and, per machine, the three things listings and ticks ask
(``point_summaries``: count, latest, latest app-consistent). A summary is recomputed from its
machine's records in the transaction that changes them, so a reader reads one row per
machine however many points it keeps.

Keeping the copy true:
- a cycle records its point right after the manifest is stored (``record``);
- an operation that may leave records behind the repository marks the machines it touches
  ``dirty`` first and clears the mark when its records are written: a cycle (a crash between
  the manifest and its record), a prune (points removed or rewritten); the migration marks
  every machine of an upgraded vault;
- a reader that finds a mark no live lease explains (the marker died: its ``machine:<id>``
  or ``prune`` lease is gone) rebuilds the records from the manifests first (``sync``):
  it lists the manifests' names, decodes only those it has no record of, and drops records
  whose manifest is gone. Marks of live operations are left to them: the records lag a
  running cycle by one point at most, which the listing would have shown a moment later.
- ``rehost points NAME``, ``find_point``, retention and prune always sync first: they are
  not hot, and what they answer must be the repository's word.

Concurrency: records are only inserted (``ON CONFLICT DO NOTHING``) and deleted, never
updated, so two processes writing the same record agree. A summary is recomputed with its
row locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock serializes every
transaction), so two processes recording points of one machine cannot each overwrite the
other's count. A sync deletes a record only after ``stat`` says its manifest is gone (a
point stored after the sync's listing is not dropped), and re-checks the manifests of the
records it inserted after committing (a prune that removed one meanwhile is not undone).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from rehost.errors import IntegrityError, NotFound, ObjectNotFound
from rehost.jobs import leases
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind
from rehost.vault.models import PointRecordRow, PointSummaryRow
from rehost.vault.vault import Vault

#: rows per statement when many records change at once (an upgraded vault's rebuild)
_BATCH = 100


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """A disk of a point as listings show it (the map itself stays in the manifest)."""

    index: int
    size: int
    full: bool


@dataclass(frozen=True, slots=True)
class PointRecord:
    """A recovery point's header as the vault records it; ``id`` names its manifest."""

    id: str
    machine: str
    time: str
    consistency: Consistency
    sequence: int
    replaces: str | None = None
    disks: tuple[DiskInfo, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def of(cls, p: RecoveryPoint) -> PointRecord:
        return cls(p.id, p.machine, p.time, p.consistency, p.sequence, p.replaces,
                   tuple(DiskInfo(d.index, d.size, d.full) for d in p.disks))


@dataclass(frozen=True, slots=True)
class PointSummary:
    """What listings, health and the scheduler ask of a machine's points."""

    points: int = 0
    latest_id: str | None = None
    latest_time: str | None = None
    latest_app_id: str | None = None
    latest_app_time: str | None = None

    @classmethod
    def of(cls, points: Sequence[RecoveryPoint | PointRecord]) -> PointSummary:
        """From points oldest first (a caller that still holds a list of manifests)."""
        app = [p for p in points if p.consistency == Consistency.APP]
        last = points[-1] if points else None
        return cls(len(points), last.id if last else None, last.time if last else None,
                   app[-1].id if app else None, app[-1].time if app else None)


def summary_of(points: PointSummary | Sequence[RecoveryPoint | PointRecord]) -> PointSummary:
    return points if isinstance(points, PointSummary) else PointSummary.of(points)


@dataclass
class SyncReport:
    """What a sync changed; ``unreadable``: manifests that would not decode (``check`` says why)."""

    added: int = 0
    removed: int = 0
    unreadable: list[str] = field(default_factory=list)


# -- reading (the hot paths) ------------------------------------------------------------------------


def summaries(vault: Vault, *, purged: Collection[str] = ()) -> dict[str, PointSummary]:
    """Every machine's summary: one row per machine, no manifest read, unless some machine's
    records may be behind the repository with nobody alive to fix them (then a sync first).

    ``purged``: machines whose points are gone by design (a completed migration). Records
    that still show points there mean a purge that did not update them (``complete``
    prunes the repository itself): sync, once per process for what they show.
    """
    rows = _summary_rows(vault)
    doubtful = {(str(vault.root), r.machine_id, r.latest_id) for r in rows
                if r.machine_id in purged and r.points} - _doubted
    if doubtful or _orphaned_marks(vault, {r.machine_id: r.dirty for r in rows}):
        _doubted.update(doubtful)
        sync(vault)
        rows = _summary_rows(vault)
    return {r.machine_id: _summary(r) for r in rows}


#: (vault, machine, latest point) that ``summaries`` synced for once: if the repository
#: really still holds points of a purged machine, saying so again needs no new sync
_doubted: set[tuple[str, str, str | None]] = set()


def summary(vault: Vault, machine_id: str) -> PointSummary:
    """One machine's summary (``summaries`` for one)."""
    with vault.session() as s:
        row = s.get(PointSummaryRow, machine_id)
    if row is not None and _orphaned_marks(vault, {machine_id: row.dirty}):
        sync(vault)
        with vault.session() as s:
            row = s.get(PointSummaryRow, machine_id)
    return _summary(row) if row is not None else PointSummary()


def records(vault: Vault, machine_id: str | None = None, *, disks: bool = True) -> list[PointRecord]:
    """Records as they are (no sync), oldest first, as ``Repository.list_points`` orders.
    ``disks=False``: without the disk sizes (retention needs times only; the JSON column is
    most of the cost of reading every record)."""
    cols = [PointRecordRow.point_id, PointRecordRow.machine_id, PointRecordRow.time,
            PointRecordRow.consistency, PointRecordRow.sequence, PointRecordRow.replaces]
    q = select(*cols, *([PointRecordRow.disks] if disks else []))
    if machine_id is not None:
        q = q.where(PointRecordRow.machine_id == machine_id)
    with vault.session() as s:
        rows = s.execute(q.order_by(PointRecordRow.machine_id, PointRecordRow.time,
                                    PointRecordRow.sequence)).all()
    return [_point_record(r, disks) for r in rows]


def _point_record(r: Any, disks: bool) -> PointRecord:
    """A record from a row of ``records``' columns (in their order)."""
    return PointRecord(str(r[0]), str(r[1]), str(r[2]), Consistency(r[3]), int(r[4]), r[5],
                       tuple(DiskInfo(int(d["index"]), int(d["size"]), bool(d["full"])) for d in r[6])
                       if disks else ())


def records_by_machine(vault: Vault, *, disks: bool = True) -> dict[str, list[PointRecord]]:
    out: dict[str, list[PointRecord]] = {}
    for r in records(vault, disks=disks):
        out.setdefault(r.machine, []).append(r)
    return out


def _summary_rows(vault: Vault) -> list[PointSummaryRow]:
    with vault.session() as s:
        return list(s.scalars(select(PointSummaryRow)))


def _summary(row: PointSummaryRow) -> PointSummary:
    return PointSummary(row.points, row.latest_id, row.latest_time, row.latest_app_id, row.latest_app_time)


def _explained(vault: Vault) -> tuple[bool, set[str]]:
    """(a prune is live, machines with a live lease): whose marks are theirs to clear."""
    live = leases.holders(vault, "")
    machines = {r.resource.removeprefix("machine:") for r in live if r.resource.startswith("machine:")}
    return any(r.resource == leases.PRUNE for r in live), machines


def _orphaned_marks(vault: Vault, dirty: dict[str, int]) -> bool:
    """Some machine is marked and no live operation explains it: its marker died (or the
    vault was upgraded), so the records may be behind and only a sync can tell."""
    marked = {m for m, d in dirty.items() if d > 0}
    if not marked:
        return False
    pruning, busy = _explained(vault)
    return not pruning and bool(marked - busy)


# -- writing ----------------------------------------------------------------------------------------


def record(vault: Vault, point: RecoveryPoint, *, unmark: bool = False) -> None:
    """A point whose manifest was just stored (a cycle's). ``unmark``: the caller marked the
    machine with ``mark`` before storing it, and this record ends that mark."""
    _apply(vault, [point], set(), unmark=point.machine if unmark else None)


def mark(vault: Vault, machine_ids: Iterable[str]) -> None:
    """Say that the records of these machines may fall behind the repository until the
    caller records or syncs (a crash meanwhile leaves the mark for the next reader)."""
    ids = sorted(set(machine_ids))
    if not ids:
        return
    with vault.session() as s, s.begin():
        _ensure_summaries(vault, s, ids)
        s.execute(update(PointSummaryRow).where(PointSummaryRow.machine_id.in_(ids))
                  .values(dirty=PointSummaryRow.dirty + 1))


def unmark(vault: Vault, machine_id: str) -> None:
    """End one mark of this caller's without recording anything (nothing was stored)."""
    with vault.session() as s, s.begin():
        s.execute(update(PointSummaryRow)
                  .where(PointSummaryRow.machine_id == machine_id, PointSummaryRow.dirty > 0)
                  .values(dirty=PointSummaryRow.dirty - 1))


@contextmanager
def changing(vault: Vault, machine_ids: Iterable[str]) -> Iterator[None]:
    """Around a prune (inside the ``prune`` lease): mark the machines whose points it may
    remove or rewrite, then bring every record in line with what it left, even after it
    failed half-way. Cut short by a crash, the marks stay and the next reader syncs."""
    mark(vault, machine_ids)
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the marks stay for the next reader; the prune's error matters
            sync(vault, pruning=True)
        raise
    sync(vault, pruning=True)


def sync(vault: Vault, vouch: Collection[str] = (), *, pruning: bool = False) -> SyncReport:
    """Bring the records in line with the repository: record manifests that have no record
    (decoding only those), drop records whose manifest is gone, recompute the summaries
    that changed, and clear the marks that no live operation holds.

    ``vouch``: machines whose marks the caller holds (a cycle syncing its own machine);
    ``pruning``: the caller holds the ``prune`` lease, so no writer runs and every mark seen
    may be cleared. Marks are read before the listing and cleared only if unchanged since:
    a mark made meanwhile stays for the next sync.
    """
    repo = vault.repo
    report = SyncReport()
    with vault.session() as s:
        marks = {m: d for m, d in s.execute(select(PointSummaryRow.machine_id, PointSummaryRow.dirty)
                                            .where(PointSummaryRow.dirty > 0))}
    clearable = dict(marks)
    if marks and not pruning:  # marks of live operations are theirs to clear
        prune_live, busy = _explained(vault)
        held = set(marks) if prune_live else busy
        clearable = {m: d for m, d in marks.items() if m not in held or m in vouch}
    names = {o.name for o in repo.storage.list(Kind.POINTS)}
    with vault.session() as s:
        rows = s.execute(select(PointRecordRow.point_id, PointRecordRow.machine_id,
                                PointRecordRow.replaces)).all()
    recorded = {pid: mid for pid, mid, _ in rows}
    known = set(recorded) | {rep for _, _, rep in rows if rep}
    new: list[RecoveryPoint] = []
    for name in sorted(names - known):
        try:
            new.append(repo.load_point_exact(name))
        except NotFound:  # removed by a prune since the listing
            continue
        except IntegrityError as e:  # not a point anyone can use; check names it
            report.unreadable.append(str(e))
    gone = {pid for pid in recorded if pid not in names and not _exists(repo, pid)}
    if new or gone or clearable:
        report.added, report.removed = _apply(vault, new, gone, recompute=set(clearable))
    # a prune may have removed an inserted point after our listing and before our insert
    late = {p.id for p in new if not _exists(repo, p.id)}
    if late:
        _apply(vault, [], late)
    if clearable:
        with vault.session() as s, s.begin():
            for mid, seen in sorted(clearable.items()):
                s.execute(update(PointSummaryRow)
                          .where(PointSummaryRow.machine_id == mid, PointSummaryRow.dirty == seen)
                          .values(dirty=0))
    return report


def _exists(repo: Repository, point_id: str) -> bool:
    try:
        repo.storage.stat(Kind.POINTS, point_id)
    except ObjectNotFound:
        return False
    return True


def _apply(vault: Vault, new: list[RecoveryPoint], gone: set[str], *, recompute: Collection[str] = (),
           unmark: str | None = None) -> tuple[int, int]:
    """Insert ``new``, delete ``gone`` and the records ``new`` points replace, and recompute the
    summaries of every machine touched (plus ``recompute``), in one transaction. Returns
    (records inserted, records deleted)."""
    replaced = {p.replaces for p in new if p.replaces}
    new = [p for p in new if p.id not in replaced]  # both manifests of a rewrite: the new one counts
    drop = gone | replaced
    with vault.session() as s, s.begin():
        owners: set[str] = set()
        for chunk in _chunks(sorted(drop)):
            owners |= set(s.scalars(select(PointRecordRow.machine_id)
                                    .where(PointRecordRow.point_id.in_(chunk))))
        machines = sorted(owners | {p.machine for p in new} | set(recompute)
                          | ({unmark} if unmark else set()))
        _ensure_summaries(vault, s, machines)
        for chunk in _chunks(machines):  # lock them in one order: no deadlock between two syncs
            s.execute(select(PointSummaryRow.machine_id).where(PointSummaryRow.machine_id.in_(chunk))
                      .order_by(PointSummaryRow.machine_id).with_for_update())
        added = 0
        for chunk in _chunks(new):
            added += _insert_records(vault, s, chunk)
        removed = 0
        for chunk in _chunks(sorted(drop)):
            removed += _rowcount(s.execute(delete(PointRecordRow).where(PointRecordRow.point_id.in_(chunk))))
        for mid in machines:
            _recompute(s, mid, unmark=mid == unmark)
    return added, removed


def _rowcount(result: Any) -> int:
    """Rows an INSERT or DELETE changed (a CursorResult's count; typed loosely by SQLAlchemy)."""
    return int(result.rowcount)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]




def _insert_records(vault: Vault, s: Session, points: Sequence[RecoveryPoint]) -> int:
    values = [{"point_id": p.id, "machine_id": p.machine, "time": p.time, "sequence": p.sequence,
               "consistency": p.consistency.value, "replaces": p.replaces,
               "disks": [{"index": d.index, "size": d.size, "full": d.full} for d in p.disks]}
              for p in points]
    make = vault.insert_or_ignore()
    if make is not None:
        # RETURNING counts what went in: a multi-row INSERT's rowcount is -1 on psycopg
        stmt = make(PointRecordRow).values(values).on_conflict_do_nothing(
            index_elements=[PointRecordRow.point_id]).returning(PointRecordRow.point_id)
        return len(s.execute(stmt).all())
    existing = set(s.scalars(select(PointRecordRow.point_id)
                             .where(PointRecordRow.point_id.in_([v["point_id"] for v in values]))))
    fresh = [v for v in values if v["point_id"] not in existing]
    if fresh:
        s.execute(insert(PointRecordRow), fresh)
    return len(fresh)


def _ensure_summaries(vault: Vault, s: Session, machine_ids: Sequence[str]) -> None:
    """A summary row for each machine, so it can be locked (a first point has none yet)."""
    make = vault.insert_or_ignore()
    for chunk in _chunks(machine_ids):
        if make is not None:
            s.execute(make(PointSummaryRow).on_conflict_do_nothing(index_elements=[PointSummaryRow.machine_id])
                      .values([{"machine_id": m, "points": 0, "dirty": 0} for m in chunk]))
            continue
        have = set(s.scalars(select(PointSummaryRow.machine_id).where(PointSummaryRow.machine_id.in_(chunk))))
        missing = [{"machine_id": m, "points": 0, "dirty": 0} for m in chunk if m not in have]
        if missing:
            s.execute(insert(PointSummaryRow), missing)


def _recompute(s: Session, machine_id: str, *, unmark: bool = False) -> None:
    """A machine's summary from its records (index range scans on machine, time, sequence)."""
    mine = PointRecordRow.machine_id == machine_id
    newest = (PointRecordRow.time.desc(), PointRecordRow.sequence.desc())
    count = s.scalar(select(func.count()).select_from(PointRecordRow).where(mine)) or 0
    latest = s.execute(select(PointRecordRow.point_id, PointRecordRow.time).where(mine)
                       .order_by(*newest).limit(1)).first()
    app = s.execute(select(PointRecordRow.point_id, PointRecordRow.time)
                    .where(mine, PointRecordRow.consistency == Consistency.APP.value)
                    .order_by(*newest).limit(1)).first()
    values: dict[str, Any] = {
        "points": count,
        "latest_id": latest[0] if latest else None, "latest_time": latest[1] if latest else None,
        "latest_app_id": app[0] if app else None, "latest_app_time": app[1] if app else None,
    }
    q = update(PointSummaryRow).where(PointSummaryRow.machine_id == machine_id)
    s.execute(q.values(**values))
    if unmark:
        s.execute(q.where(PointSummaryRow.dirty > 0).values(dirty=PointSummaryRow.dirty - 1))


def latest(vault: Vault, machine_id: str) -> RecoveryPoint | None:
    """The machine's latest point, its manifest decoded: the parent of its next cycle. For a
    caller holding the machine (no other cycle of it runs, and prune waits for the caller),
    so a mark on it is an earlier operation's that died: sync first, then the summary is
    the repository's word. A record whose manifest is gone (a prune that did not say so)
    makes it sync and look again; so does "no point" (else a lost record would make the
    next cycle a full copy)."""
    with vault.session() as s:
        row = s.get(PointSummaryRow, machine_id)
    if row is None or row.dirty > 0 or row.latest_id is None:  # "no point yet" must be true:
        row = _synced_row(vault, machine_id)                   # a first cycle is a full copy
    for attempt in range(2):
        if row is None or row.latest_id is None:
            return None
        try:
            return vault.repo.load_point_exact(row.latest_id)
        except NotFound:
            if attempt:
                raise
            row = _synced_row(vault, machine_id)
    return None


def _synced_row(vault: Vault, machine_id: str) -> PointSummaryRow | None:
    sync(vault, vouch=[machine_id])
    with vault.session() as s:
        return s.get(PointSummaryRow, machine_id)
