"""Replicas on targets that keep them (Azure: a page blob per disk with a snapshot per point).

A failover to such a target must not start by uploading whole disks, so after every
committed recovery point the machine's copy on its target is brought to that point (only
what changed is written; ``rehost.targets.azure.pageblob``). This module is the vault's side:
which target keeps the machine's replica, running the sync under a reader lease (prune
keeps the point while it is read), recording how it went on the machine (``replica``), and
dropping the copies when the migration completes. The health verdict reads that record
(``rehost.replication.health``): a replica that lags names its target and the last error.

A sync that fails leaves the recovery point as it is (the point is committed; only the copy
lags): the next cycle, or the failover's own staging step, brings the copy up to date from
whatever the copy holds, resuming a cut sync.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rehost.errors import RehostError
from rehost.jobs import leases
from rehost.repository.manifest import RecoveryPoint
from rehost.targets.base import Progress, ReplicaKeeper, ReplicaSync
from rehost.vault import targets
from rehost.vault.models import MachineRow, TargetRow
from rehost.vault.vault import Vault


def keeper_for(vault: Vault, machine: MachineRow,
               target: str | None = None) -> tuple[TargetRow, ReplicaKeeper] | None:
    """The machine's target (given, assigned, or the only one) if it keeps replicas."""
    try:
        row = targets.target_of(vault, machine, target)
    except RehostError:  # no target yet, or several and none assigned: nothing to keep
        return None
    provider = targets.provider(row)
    if not provider.capabilities.keeps_replicas or not isinstance(provider, ReplicaKeeper):
        return None
    return row, provider


def sync(vault: Vault, machine: MachineRow, point: RecoveryPoint, progress: Progress | None = None,
         *, target: str | None = None) -> ReplicaSync | None:
    """Bring the machine's replica to ``point``; None when its target keeps none. Records
    the outcome (success or error) on the machine before returning or raising."""
    found = keeper_for(vault, machine, target)
    if found is None:
        return None
    row, keeper = found
    keep = {p.id for p in vault.repo.list_points(machine.id)}
    try:
        with leases.reading(vault, [point.id], f"sync replica on {row.name}"):
            result = keeper.sync_replica(machine.name, point, vault.repo, keep=keep,
                                         journal_dir=vault.root / "cache" / "replicas", progress=progress)
    except Exception as e:
        _record(vault, machine, {"target": row.name, "error": str(e)[:500], "error_at": _now(),
                                 "error_point": point.id})
        raise
    _record(vault, machine, {"target": row.name, "point": point.id, "point_time": point.time,
                             "synced_at": _now(), "error": "", "error_at": None, "error_point": None,
                             "last": result.to_json()})
    return result


def ready_for(vault: Vault, machine: MachineRow, point: RecoveryPoint, target: str) -> bool:
    """The target already holds every disk of ``point`` (no sync needed to fail over to it)."""
    found = keeper_for(vault, machine, target)
    return found is not None and found[1].has_replica_point(machine.name, point)


def drop(vault: Vault, machine: MachineRow) -> str | None:
    """Delete the machine's replica on its target (complete migration); None if it has none."""
    found = keeper_for(vault, machine, machine.replica.get("target") or machine.placement.get("target_name"))
    if found is None:
        return None
    row, keeper = found
    note = keeper.drop_replicas(machine.name, [d.index for d in machine.disks])
    _record(vault, machine, {"target": row.name, "point": None, "dropped_at": _now(), "error": ""},
            replace=True)
    return note


def _record(vault: Vault, machine: MachineRow, values: dict[str, Any], *, replace: bool = False) -> None:
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        assert row is not None
        row.replica = values if replace else {**(row.replica or {}), **values}
        machine.replica = row.replica


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
