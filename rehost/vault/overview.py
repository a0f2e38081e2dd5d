"""A machine as an operator sees it: the one dict ``rehost machines --json``, the API and the
dashboard all show, so a field means the same thing everywhere."""

from __future__ import annotations

from typing import Any

from rehost.repository.manifest import RecoveryPoint
from rehost.vault import agents, inventory, policies
from rehost.vault.models import MachineRow
from rehost.vault.vault import Vault


def points_by_machine(vault: Vault) -> dict[str, list[RecoveryPoint]]:
    """Every point, read once and grouped (the repository is the only record of points)."""
    out: dict[str, list[RecoveryPoint]] = {}
    for p in vault.repo.list_points():
        out.setdefault(p.machine, []).append(p)
    return out


def machine_view(vault: Vault, m: MachineRow, points: list[RecoveryPoint],
                 enrolled: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One machine as ``rehost machines --json`` shows it, plus placement and assigned target.
    ``enrolled``: the agents' enrollments, read once for a list (else read here)."""
    policy = getattr(policies.policy_of(vault, m), "name", None)  # loaded with the machine
    latest = points[-1] if points else None
    return {
        "name": m.name, "source": m.source.kind, "state": m.state, "state_reason": m.state_reason,
        "disks": [{"index": d.index, "format": d.format, "size": d.size, "path": d.path} for d in m.disks],
        "points": len(points),
        "latest_point": latest.id if latest else None,
        "latest_time": latest.time if latest else None,
        "target": m.placement.get("target_name"), "runs_at": m.placement.get("dir"),
        "network_map": m.network_map,
        "policy": policy,
        "health": policies.health_of(vault, m, points).to_json(),
        "last_cycle": m.last_cycle,
        "agent": agents.agent_view(vault, m, enrolled) if agents.has_agent(m) else None,
        "placement": m.placement,
        "spec": inventory.spec_json(inventory.spec_of(m)),
        "replica": m.replica or None,
        "assigned_target": None,
    }


def machine_views(vault: Vault) -> list[dict[str, Any]]:
    """Every machine; points and agent enrollments are read once for all of them."""
    by_machine = points_by_machine(vault)
    machines = inventory.list_machines(vault)
    has_agents = any(agents.has_agent(m) for m in machines)
    enrolled = agents.authority(vault).machines() if has_agents else {}
    return [machine_view(vault, m, by_machine.get(m.id, []), enrolled) for m in machines]
