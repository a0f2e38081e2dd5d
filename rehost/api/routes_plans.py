"""Recovery plans (issue 15): reading a plan, and confirming the manual action its running
job waits for (so an operator away from the rehost host can let the plan go on)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from rehost.api import schemas
from rehost.api.auth import Operator, Reader, VaultDep
from rehost.vault import plan_jobs, plans

router = APIRouter(tags=["plans"])


@router.get("/plans", response_model=list[schemas.PlanOut])
def list_plans(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Every plan with its groups in the order they start."""
    return [p.to_json() for p in plans.list_plans(vault)]


@router.get("/plans/{name}", response_model=schemas.PlanOut)
def get_plan(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """A plan's groups: their machines and actions."""
    return plans.show(vault, name).to_json()


@router.post("/plans/{name}/confirm", response_model=schemas.PlanConfirmedOut)
def confirm(name: str, vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Confirm the manual action the plan's running job waits for (409 when none waits)."""
    return {"plan": name, "confirmed": plan_jobs.confirm(vault, name)}
