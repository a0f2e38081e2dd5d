"""A machine as an operator sees it: the one dict ``rehost machines --json``, the API and the
dashboard all show, so a field means the same thing everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rehost.repository.manifest import RecoveryPoint
from rehost.vault import agents, inventory, point_records, policies
from rehost.vault.models import MachineRow
from rehost.vault.point_records import PointRecord, PointSummary
from rehost.vault.states import ItemState as S
from rehost.vault.vault import Vault


def points_by_machine(vault: Vault, machines: Sequence[MachineRow] | None = None) -> dict[str, PointSummary]:
    """Every machine's points as listings need them (count, latest, latest app-consistent):
    one row per machine from the point records, however many points each keeps; no
    manifest is decoded (``rehost.vault.point_records``). ``machines``: as listed, so a
    completed migration still showing points has its records checked."""
    done = [m.id for m in machines or () if m.state == S.MIGRATION_COMPLETED]
    return point_records.summaries(vault, purged=done)


def machine_view(vault: Vault, m: MachineRow,
                 points: PointSummary | Sequence[RecoveryPoint | PointRecord] | None = None,
                 enrolled: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One machine as ``rehost machines --json`` shows it, plus placement and assigned target.
    ``points``: its summary (or its points, oldest first), else read from its records.
    ``enrolled``: the agents' enrollments, read once for a list (else read here)."""
    policy = getattr(policies.policy_of(vault, m), "name", None)  # loaded with the machine
    summary = point_records.summary(vault, m.id) if points is None else point_records.summary_of(points)
    return {
        "name": m.name, "source": m.source.kind, "state": m.state, "state_reason": m.state_reason,
        "disks": [{"index": d.index, "format": d.format, "size": d.size, "path": d.path} for d in m.disks],
        "points": summary.points,
        "latest_point": summary.latest_id,
        "latest_time": summary.latest_time,
        "target": m.placement.get("target_name"), "runs_at": m.placement.get("dir"),
        "network_map": m.network_map,
        "policy": policy,
        "health": policies.health_of(vault, m, summary).to_json(),
        "last_cycle": m.last_cycle,
        "agent": agents.agent_view(vault, m, enrolled) if agents.has_agent(m) else None,
        "placement": m.placement,
        "spec": inventory.spec_json(inventory.spec_of(m)),
        "replica": m.replica or None,
        "assigned_target": None,
    }


def machine_views(vault: Vault) -> list[dict[str, Any]]:
    """Every machine; point summaries and agent enrollments are read once for all of them."""
    machines = inventory.list_machines(vault)
    by_machine = points_by_machine(vault, machines)
    has_agents = any(agents.has_agent(m) for m in machines)
    enrolled = agents.authority(vault).machines() if has_agents else {}
    return [machine_view(vault, m, by_machine.get(m.id, PointSummary()), enrolled) for m in machines]
