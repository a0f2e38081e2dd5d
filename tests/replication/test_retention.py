from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rehost.errors import UsageError
from rehost.replication.retention import PointTime, RetentionPolicy, parse_duration, points_to_keep

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _every(minutes: int, hours: int) -> list[PointTime]:
    return [PointTime(f"p{i}", NOW - timedelta(minutes=i * minutes)) for i in range(hours * 60 // minutes)]


def test_thinning_follows_the_asr_scheme() -> None:
    points = _every(5, 100)  # a point every 5 minutes for 100 hours
    keep = points_to_keep(points, RetentionPolicy(), NOW)
    kept = [p for p in points if p.id in keep]
    ages = [NOW - p.time for p in kept]
    assert sum(a <= timedelta(hours=2) for a in ages) == 25  # every point of the last 2 h
    hourly = [a for a in ages if timedelta(hours=2) < a <= timedelta(hours=24)]
    assert 21 <= len(hourly) <= 23  # one per clock hour
    sparse = [a for a in ages if timedelta(hours=24) < a]
    assert 11 <= len(sparse) <= 13 and max(sparse) <= timedelta(hours=72)  # one per 4 h, to 72 h


def test_newest_point_is_always_kept_and_app_consistent_preferred() -> None:
    old = [PointTime("only", NOW - timedelta(days=30))]
    assert points_to_keep(old, RetentionPolicy(), NOW) == {"only"}
    hour = NOW.replace(minute=0) - timedelta(hours=5)
    pts = [PointTime("new", NOW), PointTime("a", hour + timedelta(minutes=50)),
           PointTime("app", hour + timedelta(minutes=10), app_consistent=True)]
    keep = points_to_keep(pts, RetentionPolicy(), NOW)
    assert "app" in keep and "a" not in keep


def test_durations_and_bad_policies() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    with pytest.raises(UsageError):
        parse_duration("soon")
    with pytest.raises(UsageError):
        RetentionPolicy(window=timedelta(hours=1), all_for=timedelta(hours=2))
