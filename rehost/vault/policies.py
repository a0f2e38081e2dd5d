"""Replication policies: creating, changing, attaching; and the health of every item."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.replication.health import Health, HealthInput, assess
from rehost.replication.retention import RetentionPolicy, parse_duration
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.vault.inventory import check_name, get_machine
from rehost.vault.models import MachineRow, PolicyRow
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


def _seconds(text: str | None, default: int, what: str, *, allow_zero: bool = False) -> int:
    if text is None:
        return default
    if allow_zero and text.strip() in ("0", "never", "off"):
        return 0
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
) -> PolicyRow:
    check_name(name, "policy")
    row = PolicyRow(name=name)
    _apply(row, rpo_threshold, retention, app_every, crash_every, bandwidth)
    with vault.session() as s, s.begin():
        if s.scalar(select(PolicyRow).where(PolicyRow.name == name)) is not None:
            raise AlreadyExists(f"a policy named {name!r} already exists")
        s.add(row)
    return row


def update_policy(vault: Vault, name: str, **changes: str | None) -> PolicyRow:
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
    if row.crash_consistent_every_s > row.rpo_threshold_s:
        raise UsageError("--crash-consistent-every must not exceed --rpo-threshold, or the RPO cannot be met")
    if row.retention_s < row.rpo_threshold_s:
        raise UsageError("--retention must be at least the --rpo-threshold")


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
    if not machine.policy_id:
        return None
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
    }


def health_of(
    vault: Vault, machine: MachineRow, points: list[RecoveryPoint], now: datetime | None = None
) -> Health:
    now = now or datetime.now(UTC)
    policy = policy_of(vault, machine)
    last = _when(points[-1]) if points else None
    app = [p for p in points if p.consistency == Consistency.APP]
    lc = machine.last_cycle or {}
    seen = vault.scheduler_heartbeat()
    return assess(
        HealthInput(
            state=machine.state,
            last_point=last,
            last_app_point=_when(app[-1]) if app else None,
            rpo_threshold_s=policy.rpo_threshold_s if policy else None,
            app_every_s=policy.app_consistent_every_s if policy else 0,
            cycle_every_s=policy.crash_consistent_every_s if policy else 30,
            last_attempt=datetime.fromisoformat(lc["time"]) if lc.get("time") else None,
            last_error=lc.get("error", ""),
            last_cycle_s=lc.get("seconds"),
            scheduler_seen=seen,
        ),
        now,
    )


def _when(p: RecoveryPoint) -> datetime:
    return datetime.strptime(p.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
