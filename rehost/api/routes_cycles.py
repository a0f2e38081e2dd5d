"""A machine's replication cycles, one per cycle, as the item page's charts draw them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from rehost.api.auth import Reader, VaultDep
from rehost.vault import audit, cycle_history, inventory

router = APIRouter(tags=["replicated items"])


@router.get("/machines/{name}/cycles")
def machine_cycles(name: str, vault: VaultDep, _: Reader,
                   since: Annotated[str, Query(max_length=40)] = "24h") -> dict[str, Any]:
    """Every cycle that ended since ``since`` (a duration such as ``24h``, ``7d``, or an ISO
    time), oldest first: when it ended, seconds it took, bytes changed and stored, its point
    and consistency, or its error. Kept for the policy's retention, at least 7 days."""
    machine = inventory.get_machine(vault, name)
    start = audit.parse_since(since)
    return {"machine": machine.name, "since": start.isoformat(),
            "cycles": [c.to_json() for c in cycle_history.history(vault, machine.id, start)]}
