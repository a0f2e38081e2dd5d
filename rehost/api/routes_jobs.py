"""Jobs (steps and progress), the overview, and who the caller is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from rehost.api import schemas, views
from rehost.api.auth import Operator, Reader, VaultDep
from rehost.jobs import runner

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=list[schemas.JobOut])
def list_jobs(vault: VaultDep, _: Reader, machine: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    """Jobs, newest first; ``machine`` keeps one item's."""
    return views.job_views(vault, machine, limit)


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def get_job(job_id: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """A job with its steps; a running step has ``done``/``total`` bytes (poll for progress)."""
    return views.job_view(vault, runner.get_job(vault, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=schemas.JobOut)
def cancel_job(job_id: str, vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Cancel a job that is not running and not past its point of no return (409 otherwise,
    with what to do instead)."""
    return views.job_view(vault, runner.cancel_job(vault, job_id))


@router.get("/overview", response_model=schemas.OverviewOut, tags=["overview"])
def overview(vault: VaultDep, _: Reader) -> dict[str, Any]:
    """Items by health and state, the worst RPO, and alerts that need someone's attention."""
    return views.overview(vault)


@router.get("/whoami", response_model=schemas.WhoAmIOut, tags=["tokens"])
def whoami(caller: Reader) -> dict[str, Any]:
    return {"name": caller.name, "role": caller.role.name}
