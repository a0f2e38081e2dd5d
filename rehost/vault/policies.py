"""Replication policies: creating, changing, attaching; and the health of every item."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.replication.health import Health, HealthInput, assess
from rehost.replication.retention import RetentionPolicy, parse_duration
from rehost.repository.manifest import RecoveryPoint
from rehost.vault import agents, point_records
from rehost.vault.inventory import check_name, get_machine
from rehost.vault.models import MachineRow, PolicyRow
from rehost.vault.point_records import PointRecord, PointSummary
from rehost.vault.vault import Vault

_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_bandwidth(text: str) -> int:
    """'100MB/s', '20MiB/s', '500kb/s' -> bytes per second."""
    m = re.fullmatch(r"([0-9]{1,12}(?:[.][0-9]{1,6})?)([a-z]*)", text.strip().lower().removesuffix("/s"))
    unit = (m.group(2) or "b") if m else ""
    if m is None or unit not in _UNITS:
        raise UsageError(f"{text!r} is not a bandwidth: use e.g. 100MB/s or 20MiB/s")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError("bandwidth must be positive")
    return value


def format_bandwidth(bps: int) -> str:
    """The inverse of parse_bandwidth, in the largest unit that is exact: 10000000 -> '10MB/s'."""
    for label in ("GiB", "GB", "MiB", "MB", "KiB", "kB"):
        if bps % _UNITS[label.lower()] == 0:
            return f"{bps // _UNITS[label.lower()]}{label}/s"
    return f"{bps}B/s"


# -- bandwidth schedule: windows with their own limit (e.g. work hours) --------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNLIMITED = ("0", "none", "off", "unlimited")
_WINDOW_HINT = "use e.g. 'mon-fri 08:00-18:00=10MB/s', 'sat,sun 00:00-24:00=none' or '22:00-06:00=50MB/s'"


def _day(word: str, spec: str) -> int:
    w = word.strip().lower()
    for names in (_DAY_NAMES, _FULL_DAY_NAMES):
        if w in names:
            return names.index(w)
    raise UsageError(
        f"bandwidth window {spec!r}: {word!r} is not a day: use mon, tue, wed, thu, fri, sat, sun, "
        "a range such as mon-fri, or a list such as sat,sun"
    )


def _days(text: str, spec: str) -> list[int]:
    days: set[int] = set()
    for part in text.split(","):
        if not part.strip():
            raise UsageError(f"bandwidth window {spec!r}: empty day in {text!r}")
        first, sep, last = part.partition("-")
        a = _day(first, spec)
        b = _day(last, spec) if sep else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # fri-mon wraps over the weekend
    return sorted(days)


def _minute_of_day(text: str, spec: str, *, end: bool) -> int:
    m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", text.strip())
    value = int(m.group(1)) * 60 + int(m.group(2)) if m else -1
    if m is None or int(m.group(2)) > 59 or not 0 <= value <= (24 * 60 if end else 24 * 60 - 1):
        most = "24:00" if end else "23:59"
        raise UsageError(
            f"bandwidth window {spec!r}: {text.strip()!r} is not a time: use HH:MM, 00:00 to {most}"
        )
    return value


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_window(spec: str) -> dict[str, Any]:
    """'mon-fri 08:00-18:00=10MB/s' -> {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00",
    "bps": 10000000}. No days: every day; a rate of none: unlimited in the window; an end before
    the start: the window goes on past midnight (its days are the days it starts on)."""
    when, eq, rate = spec.partition("=")
    if not eq or not rate.strip():
        raise UsageError(
            f"bandwidth window {spec!r} has no '=RATE' (the limit in the window): {_WINDOW_HINT}"
        )
    words = re.sub(r"\s*,\s*", ",", when).split()  # 'sat, sun' is 'sat,sun'
    if len(words) not in (1, 2):
        raise UsageError(f"bandwidth window {spec!r}: expected '[DAYS] HH:MM-HH:MM=RATE': {_WINDOW_HINT}")
    days = _days(words[0], spec) if len(words) == 2 else list(range(7))
    start_text, dash, end_text = words[-1].partition("-")
    if not dash:
        raise UsageError(f"bandwidth window {spec!r}: {words[-1]!r} is not a time range: use HH:MM-HH:MM")
    start = _minute_of_day(start_text, spec, end=False)
    end = _minute_of_day(end_text, spec, end=True)
    if start == end:
        raise UsageError(
            f"bandwidth window {spec!r}: it starts and ends at {_hhmm(start)}: a window must not be empty "
            "(a whole day is 00:00-24:00)"
        )
    rate = rate.strip()
    if rate.lower() in _UNLIMITED:
        bps = None
    else:
        try:
            bps = parse_bandwidth(rate)
        except UsageError as e:
            raise UsageError(f"bandwidth window {spec!r}: {e}") from None
    return {"days": days, "start": _hhmm(start), "end": _hhmm(end), "bps": bps}


def parse_schedule(specs: list[str]) -> list[dict[str, Any]]:
    """Windows in the order given (the first that contains a time wins); ['none'] is no schedule."""
    cleared = [s for s in specs if s.strip().lower() in _UNLIMITED]
    if cleared and len(specs) > 1:
        raise UsageError(
            f"bandwidth window {cleared[0]!r} clears the schedule: give it alone, without windows"
        )
    if cleared:
        return []
    return [parse_window(s) for s in specs]


def window_spec(window: dict[str, Any]) -> str:
    """A stored window as the text that makes it: {"days": [0..4], ...} -> 'mon-fri 08:00-18:00=10MB/s'."""
    days: list[int] = sorted(window["days"])
    runs: list[list[int]] = []
    for d in days:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    names = ",".join(
        f"{_DAY_NAMES[r[0]]}-{_DAY_NAMES[r[-1]]}" if len(r) > 2 else ",".join(_DAY_NAMES[d] for d in r)
        for r in runs
    )
    rate = format_bandwidth(window["bps"]) if window["bps"] else "none"
    times = f"{window['start']}-{window['end']}={rate}"
    return times if len(days) == 7 else f"{names} {times}"


def window_at(policy: PolicyRow, when: datetime) -> dict[str, Any] | None:
    """The first window of the policy's schedule that contains ``when`` (the server's local
    time; an aware datetime is converted to it), or None."""
    if when.tzinfo is not None:
        when = when.astimezone()
    t = when.hour * 60 + when.minute + (when.second + when.microsecond / 1e6) / 60
    today = when.weekday()
    yesterday = (today - 1) % 7
    for w in policy.bandwidth_schedule or []:
        start, end = _minutes(w["start"]), _minutes(w["end"])
        days = w["days"]
        if start < end:
            if today in days and start <= t < end:
                return w
        elif (today in days and t >= start) or (yesterday in days and t < end):  # past midnight
            return w
    return None


def bandwidth_at(policy: PolicyRow, when: datetime) -> int | None:
    """The limit (bytes per second; None: unlimited) at ``when``: the first window of the
    schedule that contains it, else the policy's bandwidth."""
    window = window_at(policy, when)
    if window is None:
        return policy.bandwidth_bps
    bps: int | None = window["bps"]
    return bps


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _seconds(text: str | None, default: int, what: str, *, allow_zero: bool = False) -> int:
    if text is None:
        return default
    if allow_zero and text.strip() in ("0", "never", "off"):
        return 0
    if text.strip().startswith("-"):
        raise UsageError(f"{what} must be positive, not {text.strip()!r}")
    s = int(parse_duration(text).total_seconds())
    if s <= 0:
        raise UsageError(f"{what} must be positive")
    return s


def create_policy(
    vault: Vault,
    name: str,
    *,
    rpo_threshold: str | None = None,
    retention: str | None = None,
    app_every: str | None = None,
    crash_every: str | None = None,
    bandwidth: str | None = None,
    bandwidth_schedule: list[str] | None = None,
) -> PolicyRow:
    check_name(name, "policy")
    row = PolicyRow(name=name, bandwidth_schedule=[])
    _apply(row, rpo_threshold, retention, app_every, crash_every, bandwidth, bandwidth_schedule)
    with vault.session() as s, s.begin():
        if s.scalar(select(PolicyRow).where(PolicyRow.name == name)) is not None:
            raise AlreadyExists(f"a policy named {name!r} already exists")
        s.add(row)
    return row


def update_policy(
    vault: Vault, name: str, *, bandwidth_schedule: list[str] | None = None, **changes: str | None
) -> PolicyRow:
    """Change what is given; ``bandwidth_schedule`` replaces the schedule (['none'] clears it)."""
    with vault.session() as s, s.begin():
        row = s.scalar(select(PolicyRow).where(PolicyRow.name == name))
        if row is None:
            raise NotFound(f"no policy named {name!r}")
        _apply(
            row,
            changes.get("rpo_threshold"),
            changes.get("retention"),
            changes.get("app_every"),
            changes.get("crash_every"),
            changes.get("bandwidth"),
            bandwidth_schedule,
            partial=True,
        )
    return get_policy(vault, name)


def _apply(
    row: PolicyRow,
    rpo: str | None,
    retention: str | None,
    app: str | None,
    crash: str | None,
    bandwidth: str | None,
    schedule: list[str] | None,
    *,
    partial: bool = False,
) -> None:
    def cur(value: int | None, default: int) -> int:
        return value if partial and value is not None else default

    row.rpo_threshold_s = _seconds(rpo, cur(row.rpo_threshold_s, 300), "--rpo-threshold")
    row.retention_s = _seconds(retention, cur(row.retention_s, 24 * 3600), "--retention")
    row.app_consistent_every_s = _seconds(
        app, cur(row.app_consistent_every_s, 0), "--app-consistent-every", allow_zero=True
    )
    row.crash_consistent_every_s = _seconds(
        crash, cur(row.crash_consistent_every_s, 30), "--crash-consistent-every"
    )
    if bandwidth is not None:
        row.bandwidth_bps = None if bandwidth in ("0", "none", "off") else parse_bandwidth(bandwidth)
    if schedule is not None:
        row.bandwidth_schedule = parse_schedule(schedule)
    if row.retention_s < row.crash_consistent_every_s:
        raise UsageError(
            f"--retention ({duration_text(row.retention_s)}) must be at least the --crash-consistent-every "
            f"({duration_text(row.crash_consistent_every_s)}): every point would expire before the next "
            "is taken"
        )
    if row.crash_consistent_every_s > row.rpo_threshold_s:
        raise UsageError("--crash-consistent-every must not exceed --rpo-threshold, or the RPO cannot be met")
    if row.retention_s < row.rpo_threshold_s:
        raise UsageError("--retention must be at least the --rpo-threshold")


def duration_text(seconds: int) -> str:
    """Seconds as the shortest duration text that is exact: 90 -> '90s', 3600 -> '1h'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def get_policy(vault: Vault, name: str) -> PolicyRow:
    with vault.session() as s:
        row = s.scalar(select(PolicyRow).where(PolicyRow.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(PolicyRow.name))) or "none"
            raise NotFound(f"no policy named {name!r} (policies: {known})")
        return row


def list_policies(vault: Vault) -> list[PolicyRow]:
    with vault.session() as s:
        return list(s.scalars(select(PolicyRow).order_by(PolicyRow.name)))


def attach(vault: Vault, machine_name: str, policy_name: str) -> None:
    machine, policy = get_machine(vault, machine_name), get_policy(vault, policy_name)
    with vault.session() as s, s.begin():
        m = s.get(MachineRow, machine.id)
        assert m is not None
        m.policy_id = policy.id


def policy_of(vault: Vault, machine: MachineRow) -> PolicyRow | None:
    """The machine's policy: loaded with it by ``inventory`` (no query per machine in
    listings and scheduler ticks), else looked up."""
    if not machine.policy_id:
        return None
    if "policy" not in sa_inspect(machine).unloaded:
        return machine.policy
    with vault.session() as s:
        return s.get(PolicyRow, machine.policy_id)


def retention_of(policy: PolicyRow) -> RetentionPolicy:
    window = timedelta(seconds=policy.retention_s)
    return RetentionPolicy(
        window=window, all_for=min(timedelta(hours=2), window), hourly_for=min(timedelta(hours=24), window)
    )


def policy_json(p: PolicyRow) -> dict[str, Any]:
    return {
        "name": p.name,
        "rpo_threshold_s": p.rpo_threshold_s,
        "retention_s": p.retention_s,
        "app_consistent_every_s": p.app_consistent_every_s,
        "crash_consistent_every_s": p.crash_consistent_every_s,
        "bandwidth_bps": p.bandwidth_bps,
        "bandwidth_schedule": [window_spec(w) for w in p.bandwidth_schedule or []],
        "bandwidth_windows": [dict(w) for w in p.bandwidth_schedule or []],
    }


def health_of(
    vault: Vault, machine: MachineRow,
    points: PointSummary | Sequence[RecoveryPoint | PointRecord] | None = None, now: datetime | None = None,
) -> Health:
    """The item's health. ``points``: its point summary (what listings read for every machine
    at once), or its points oldest first; else its summary is read from the point records.
    Only the latest and latest app-consistent times matter, never the whole history."""
    now = now or datetime.now(UTC)
    policy = policy_of(vault, machine)
    summary = point_records.summary(vault, machine.id) if points is None else point_records.summary_of(points)
    last = _parse_point_time(summary.latest_time) if summary.latest_time else None
    last_app = _parse_point_time(summary.latest_app_time) if summary.latest_app_time else None
    lc = machine.last_cycle or {}
    hb = machine.heartbeat or {}
    rp = machine.replica or {}
    seen = vault.scheduler_heartbeat()
    return assess(
        HealthInput(
            state=machine.state,
            last_point=last,
            last_app_point=last_app,
            rpo_threshold_s=policy.rpo_threshold_s if policy else None,
            app_every_s=policy.app_consistent_every_s if policy else 0,
            cycle_every_s=policy.crash_consistent_every_s if policy else 30,
            last_attempt=datetime.fromisoformat(lc["time"]) if lc.get("time") else None,
            last_error=lc.get("error", ""),
            last_cycle_s=lc.get("seconds"),
            scheduler_seen=seen,
            failures=int(lc.get("failures", 0)),
            agent=agents.has_agent(machine),
            agent_seen=datetime.fromisoformat(hb["seen"]) if hb.get("seen") else None,
            agent_error=str(hb.get("error") or ""),
            replica_target=str(rp.get("target") or ""),
            replica_point_time=_parse_point_time(rp["point_time"]) if rp.get("point_time") else None,
            replica_error=str(rp.get("error") or ""),
        ),
        now,
    )


def _parse_point_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
