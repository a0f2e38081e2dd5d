"""The migration report as JSON (``rehost report --format json`` prints the same)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rehost.api.auth import Reader, VaultDep
from rehost.vault import report

router = APIRouter(tags=["report"])


@router.get("/machines/{name}/report")
def machine_report(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """Where the machine went and how: source and target, disks, the recovery point used, each
    step's timing, the verdict, old and new addresses, what completion removed, and the
    post-migration steps still to do. Printable HTML: /ui/report/machines/{name}."""
    return report.machine_report(vault, name)


@router.get("/plans/{name}/report")
def plan_report(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """Every machine of the plan as ``/machines/{name}/report`` has it, and the plan's failover."""
    return report.plan_report(vault, name)
