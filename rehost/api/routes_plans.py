"""Recovery plans (issue 15): reading a plan, following its newest plan job, starting a test
failover of the whole plan (or its cleanup), its real failover and its completion (refused
while a machine's verdict did not pass, unless forced with a recorded reason), and confirming
the manual action its running job waits for (so an operator away from the rehost host can let
the plan go on)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from rehost.api import schemas, views
from rehost.api.auth import Operator, Reader, VaultDep
from rehost.api.routes_items import JOB_RESPONSE, launcher
from rehost.errors import InvalidState, NotFound
from rehost.jobs.models import JobRow
from rehost.jobs.runner import effective_state, get_job
from rehost.vault import plan_jobs, plans
from rehost.vault.vault import Vault

router = APIRouter(tags=["plans"])

#: every plan job's kind starts so (plan-test-failover, plan-test-cleanup, plan-failover, ...)
PLAN_KIND_PREFIX = "plan-"


def newest_plan_job(vault: Vault, name: str) -> JobRow | None:
    """The plan's newest plan job of any kind (its ``machine_name`` is the plan's name)."""
    with vault.session() as s:
        return s.scalar(
            select(JobRow).where(JobRow.machine_name == name, JobRow.kind.startswith(PLAN_KIND_PREFIX))
            .options(selectinload(JobRow.steps)).order_by(JobRow.created_at.desc()).limit(1)
        )


def _child_view(vault: Vault, job_id: str) -> dict[str, Any]:
    try:
        child = get_job(vault, job_id)
    except NotFound:  # forgotten since (rehost keeps a bounded number of jobs)
        return {"job": job_id, "kind": "", "state": "forgotten", "step": "", "verdict": None}
    state = effective_state(child)
    running = next((s for s in child.steps if s.state == "running"), None)
    failed = next((s for s in child.steps if s.state == "failed"), None)
    step = running or failed
    return {"job": child.id, "kind": child.kind, "state": state, "step": step.title if step else "",
            "verdict": views.verdict_view(child.outputs or {})}


def plan_job_view(vault: Vault, job: JobRow) -> dict[str, Any]:
    """The plan job as ``GET /jobs/{id}`` shows it, with its children, the manual action it
    waits for, the confirmed ones and its verdict."""
    view = views.job_view(vault, job)
    outputs = job.outputs or {}
    waiting = outputs.get("waiting")
    view.update(
        plan=job.machine_name,
        children={m: _child_view(vault, j) for m, j in (outputs.get("children") or {}).items()},
        waiting={"key": str(waiting.get("key", "")), "text": str(waiting.get("text", ""))}
        if isinstance(waiting, dict) and waiting else None,
        confirmed=[str(k) for k in outputs.get("confirmed", [])],
    )
    return view


def plan_summaries(vault: Vault) -> list[dict[str, Any]]:
    """Every plan with its groups and its newest plan job (or None): the dashboard's list."""
    out = []
    for p in plans.list_plans(vault):
        job = newest_plan_job(vault, p.name)
        out.append({**p.to_json(), "machines": p.machines,
                    "job": None if job is None else views.job_view(vault, job)})
    return out


@router.get("/plans", response_model=list[schemas.PlanOut])
def list_plans(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Every plan with its groups in the order they start."""
    return [p.to_json() for p in plans.list_plans(vault)]


@router.get("/plans/{name}", response_model=schemas.PlanOut)
def get_plan(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """A plan's groups: their machines and actions."""
    return plans.show(vault, name).to_json()


@router.get("/plans/{name}/job", response_model=schemas.PlanJobOut)
def get_plan_job(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """The plan's newest plan job: a step per group, each machine's child job (state, running
    step, verdict), the manual action it waits for, and its verdict. Poll it for progress."""
    plans.show(vault, name)  # 404 for a plan that does not exist
    job = newest_plan_job(vault, name)
    if job is None:
        raise NotFound(f"plan {name!r} has no plan job yet: start a test failover of it "
                       f"(rehost plan failover {name} --test)")
    return plan_job_view(vault, job)


def _start(vault: Vault, kind: str, name: str, **options: Any) -> JobRow:
    """Refuse while the plan's newest job has not ended (one plan job at a time), then start."""
    plans.show(vault, name)
    last = newest_plan_job(vault, name)
    if last is not None:
        state = effective_state(last)
        if state in ("queued", "running"):
            raise InvalidState(f"plan {name!r} has a {last.kind} job {state} ({last.id}); wait for it")
        if state == "interrupted":
            raise InvalidState(f"plan {name!r} has an interrupted {last.kind} job ({last.id}): "
                               f"continue it with rehost job resume {last.id}")
    return plan_jobs.start(vault, kind, name, **options)


@router.post("/plans/{name}/failover", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def failover(name: str, body: schemas.PlanFailoverIn, request: Request, response: Response,
             vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Fail the whole plan over, group after group, as one plan job that runs now; follow it at
    ``/plans/{name}/job``. ``{"test": true}`` (optionally ``"at": ISO time``: the newest points
    at or before it) boots copies on the isolated network; ``{"cleanup": true}`` removes them;
    ``{"shutdown_source": true|false}`` is the real failover. 409 for a plan without machines
    or with a plan job that has not ended."""
    options: dict[str, Any] = {} if body.cleanup else {
        "fixups": list(body.fixups), "readiness_force_reason": body.readiness_force_reason}
    if body.test:
        kind = plan_jobs.TEST_FAILOVER
        options["at"] = body.at
    elif body.cleanup:
        kind = plan_jobs.TEST_CLEANUP
    else:
        kind = plan_jobs.FAILOVER
        options["shutdown_source"] = bool(body.shutdown_source)
    return _plan_accepted(request, response, vault, lambda v: _start(v, kind, name, **options))


@router.post("/plans/{name}/complete", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def complete(name: str, request: Request, response: Response, vault: VaultDep, _: Operator,
             body: schemas.ForceIn | None = None) -> dict[str, Any]:
    """Complete the migration of every machine of the plan, as one plan job. Refused (409, naming
    each machine whose last failover's verdict did not pass) unless ``{"force": true, "reason":
    "..."}``: the reason is recorded in the plan job and each machine's."""
    reason = body.force_reason if body else None
    return _plan_accepted(request, response, vault,
                          lambda v: _start(v, plan_jobs.COMPLETE, name, force_reason=reason))


def _plan_accepted(request: Request, response: Response, vault: Vault,
                   create: Callable[[Vault], JobRow]) -> dict[str, Any]:
    job = launcher(request).start(vault, create)
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return views.job_view(vault, job)


@router.post("/plans/{name}/confirm", response_model=schemas.PlanConfirmedOut)
def confirm(name: str, vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Confirm the manual action the plan's running job waits for (409 when none waits)."""
    return {"plan": name, "confirmed": plan_jobs.confirm(vault, name)}
