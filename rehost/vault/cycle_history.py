"""Each machine's replication cycles, one row per cycle (``cycle_records``, migration 0011).

``machines.last_cycle`` says how the last attempt went; the item page's charts (RPO over the
last day, bytes changed and duration per cycle) need every cycle of the day. A cycle records
itself where it runs (``rehost.vault.protection.replicate``), so cycles of the scheduler, of
``rehost replicate`` and of the API are all here: one INSERT per cycle, and now and then a
DELETE of the rows retention lets go (older than the machine's policy retention or
``MIN_KEEP``, whichever is longer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from rehost.vault.models import CycleRecordRow, MachineRow, PolicyRow
from rehost.vault.vault import Vault

#: rows are kept at least this long, even under a policy with a shorter retention
MIN_KEEP = timedelta(days=7)
#: retention runs when the new row's id is a multiple of this (cheap, and often enough)
PRUNE_EVERY = 50


@dataclass(frozen=True)
class CycleRecord:
    """One cycle: when it ended (UTC), how long it took, what it changed and stored, and its
    point (``point_time``: the manifest's time text) or its error."""

    time: datetime
    seconds: float
    changed_bytes: int = 0
    stored_bytes: int = 0
    point: str | None = None
    point_time: str | None = None
    consistency: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "seconds": self.seconds, "changed_bytes": self.changed_bytes,
                "stored_bytes": self.stored_bytes, "point": self.point, "point_time": self.point_time,
                "consistency": self.consistency, "ok": self.ok, "error": self.error}

    @classmethod
    def of(cls, row: CycleRecordRow) -> CycleRecord:
        return cls(_aware(row.time), row.seconds, row.changed_bytes, row.stored_bytes, row.point_id,
                   row.point_time, row.consistency, row.error)


def record(vault: Vault, machine_id: str, *, seconds: float, changed_bytes: int = 0, stored_bytes: int = 0,
           point: str | None = None, point_time: str | None = None, consistency: str = "", error: str = "",
           now: datetime | None = None) -> CycleRecord:
    """Append one cycle (ended ``now``); every ``PRUNE_EVERY`` rows, apply retention."""
    row = CycleRecordRow(machine_id=machine_id, time=_naive(now or datetime.now(UTC)),
                         seconds=round(float(seconds), 3), changed_bytes=changed_bytes,
                         stored_bytes=stored_bytes, point_id=point, point_time=point_time,
                         consistency=consistency, error=error[:500])
    with vault.session() as s, s.begin():
        s.add(row)
        s.flush()
        rec = CycleRecord.of(row)
        row_id = row.id
    if row_id % PRUNE_EVERY == 0:
        apply_retention(vault, now)
    return rec


def history(vault: Vault, machine_id: str, since: datetime, *,
            with_previous: bool = False) -> list[CycleRecord]:
    """The machine's cycles that ended at or after ``since``, oldest first. ``with_previous``:
    also the newest successful cycle before (where the RPO stood when the window opened)."""
    with vault.session() as s:
        rows = list(s.scalars(select(CycleRecordRow).where(
            CycleRecordRow.machine_id == machine_id, CycleRecordRow.time >= _naive(since))
            .order_by(CycleRecordRow.time, CycleRecordRow.id)))
        if with_previous:
            before = s.scalar(select(CycleRecordRow).where(
                CycleRecordRow.machine_id == machine_id, CycleRecordRow.time < _naive(since),
                CycleRecordRow.error == "").order_by(CycleRecordRow.time.desc()).limit(1))
            if before is not None:
                rows.insert(0, before)
        return [CycleRecord.of(r) for r in rows]


def apply_retention(vault: Vault, now: datetime | None = None) -> int:
    """Delete the rows older than their machine's policy retention or ``MIN_KEEP``, whichever
    is longer (``MIN_KEEP`` for a machine without a policy, or whose row is gone); the number
    deleted."""
    now = now or datetime.now(UTC)
    with vault.session() as s, s.begin():
        longer = {mid: timedelta(seconds=kept) for mid, kept in s.execute(
            select(MachineRow.id, PolicyRow.retention_s).join(PolicyRow, MachineRow.policy_id == PolicyRow.id)
            .where(PolicyRow.retention_s > MIN_KEEP.total_seconds()))}
        gone = 0
        q = delete(CycleRecordRow).where(CycleRecordRow.time < _naive(now - MIN_KEEP))
        if longer:
            q = q.where(CycleRecordRow.machine_id.not_in(list(longer)))
        gone += _count(s.execute(q))
        for mid, kept in longer.items():
            gone += _count(s.execute(delete(CycleRecordRow).where(
                CycleRecordRow.machine_id == mid, CycleRecordRow.time < _naive(now - kept))))
    return gone


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _naive(t: datetime) -> datetime:
    """UTC without a zone, as the database's DateTime columns hold it."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
