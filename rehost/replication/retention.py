"""Retention: which recovery points to keep, ASR-style thinning (design §6). Pure logic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rehost.errors import UsageError


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """All points for ``all_for``, hourly until ``hourly_for``, then one per ``sparse_every``."""

    window: timedelta = timedelta(hours=72)
    all_for: timedelta = timedelta(hours=2)
    hourly_for: timedelta = timedelta(hours=24)
    sparse_every: timedelta = timedelta(hours=4)

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.all_for <= self.window:
            raise UsageError("retention: the all-points period must lie inside the window")
        if self.sparse_every <= timedelta(0):
            raise UsageError("retention: the sparse interval must be positive")


@dataclass(frozen=True, slots=True)
class PointTime:
    id: str
    time: datetime
    app_consistent: bool = False


def points_to_keep(points: Sequence[PointTime], policy: RetentionPolicy, now: datetime) -> set[str]:
    """Ids to keep. The newest point is always kept, even outside the window."""
    if not points:
        return set()
    ordered = sorted(points, key=lambda p: p.time, reverse=True)
    keep = {ordered[0].id}
    buckets: dict[tuple[str, int], PointTime] = {}
    for p in ordered:
        age = now - p.time
        if age > policy.window:
            continue
        if age <= policy.all_for:
            keep.add(p.id)
            continue
        every = timedelta(hours=1) if age <= policy.hourly_for else policy.sparse_every
        key = ("h" if every == timedelta(hours=1) else "s", int(p.time.timestamp() // every.total_seconds()))
        best = buckets.get(key)
        # newest first, so the first seen is the newest; an app-consistent one wins over it
        if best is None or (p.app_consistent and not best.app_consistent):
            buckets[key] = p
    keep.update(p.id for p in buckets.values())
    return keep


def parse_duration(text: str) -> timedelta:
    """'30s', '5m', '24h', '7d' -> timedelta; a clear error otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    if not re.fullmatch(r"[0-9]{1,9}[smhd]", t):
        raise UsageError(f"{text!r} is not a duration: use a number and s, m, h or d (e.g. 24h)")
    return timedelta(seconds=int(t[:-1]) * units[t[-1]])
