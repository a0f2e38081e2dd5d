"""Sources, machines (replicated items), recovery points, and the operations on an item.

Every operation that takes time (replicate, test failover, cleanup, failover, complete) is a
job: the request checks the item's state through the same service the CLI calls, creates
the job, starts it in a thread and answers 202 with the job, whose URL is in ``Location``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from rehost.api import items, schemas, views
from rehost.api.auth import Admin, Operator, Reader, VaultDep
from rehost.api.background import JobLauncher
from rehost.api.errors import Forbidden
from rehost.api.tokens import Role
from rehost.errors import UsageError
from rehost.guest.probes import Check
from rehost.jobs.models import JobRow
from rehost.replication.retention import parse_duration
from rehost.vault import agents, failover, inventory, overview, protection, roots, verdicts
from rehost.vault import readiness as vault_readiness
from rehost.vault.cycles import start_replicate_job
from rehost.vault.vault import Vault

router = APIRouter(tags=["replicated items"])

JOB_RESPONSE: dict[int | str, dict[str, Any]] = {202: {"description": "The job was created and runs now"}}


def launcher(request: Request) -> JobLauncher:
    jl = request.app.state.jobs
    assert isinstance(jl, JobLauncher)
    return jl


def _accepted(request: Request, response: Response, vault: Vault,
              create: Callable[[Vault], JobRow]) -> dict[str, Any]:
    job = launcher(request).start(vault, create)
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return views.job_view(vault, job)


@router.get("/sources", response_model=list[schemas.SourceOut], tags=["infrastructure"])
def list_sources(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Where machines come from; an image source holds one machine."""
    return views.source_views(vault)


@router.post("/sources/image", response_model=schemas.MachineOut, status_code=201, tags=["infrastructure"])
def add_image_source(body: schemas.AddImageSourceIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Register a machine made of disk image files on the rehost server (or one OVA/OVF)."""
    m = inventory.add_image_source(vault, body.name, [Path(p) for p in body.paths], vm=body.vm,
                                   confine=roots.guard(vault))
    return views.machine_detail(vault, m.name)


@router.post("/sources/physical", response_model=schemas.InvitationOut, status_code=201,
             tags=["infrastructure"])
def add_physical_source(body: schemas.AddPhysicalSourceIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Register a physical machine; the answer holds its agent's one-time passphrase (shown
    once: run ``rehost-agent register --passphrase ... --fingerprint ...`` on the machine)."""
    invitation = agents.add_physical_source(vault, body.name, parse_duration(body.expires).total_seconds())
    return dataclasses.asdict(invitation)


@router.get("/machines", response_model=list[schemas.MachineOut])
def list_machines(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Every replicated item with its state, health (RPO against its policy) and last point."""
    return overview.machine_views(vault)


@router.get("/machines/{name}", response_model=schemas.MachineDetailOut)
def get_machine(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """One item with its disks, health, placement after failover, assigned target and what is
    known of its newest point's readiness (cached: nothing is inspected to answer)."""
    return {**views.machine_detail(vault, name), "readiness": vault_readiness.known(vault, name)}


@router.get("/machines/{name}/points", response_model=list[schemas.PointOut], tags=["recovery points"])
def list_points(name: str, vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Recovery points of an item, oldest first."""
    return [views.point_view(p) for p in protection.list_points(vault, name)]


@router.post("/machines/{name}/enable", response_model=schemas.MachineOut)
def enable(name: str, body: schemas.EnableIn, request: Request, vault: VaultDep,
           _: Operator) -> dict[str, Any]:
    """Protect an item: attach a policy and a target, and (by default) start its first
    replication as a job. The item's job list shows that job."""
    items.enable(vault, name, policy=body.policy, target=body.target, network_map=body.network_map)
    if body.replicate:
        launcher(request).start(vault, lambda v: start_replicate_job(v, name))
    return views.machine_detail(vault, name)


@router.post("/machines/{name}/disable", response_model=schemas.MachineOut)
def disable(name: str, vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Stop continuous replication (detach the policy); points and target are kept."""
    items.detach_policy(vault, name)
    return views.machine_detail(vault, name)


@router.post("/machines/{name}/replicate", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE)
def replicate(name: str, request: Request, response: Response, vault: VaultDep, _: Operator,
              body: schemas.ReplicateIn | None = None) -> dict[str, Any]:
    """One replication cycle now, as a job: a full copy first, then only changed blocks."""
    app = bool(body and body.app_consistent)
    return _accepted(request, response, vault, lambda v: start_replicate_job(v, name, app_consistent=app))


@router.post("/machines/{name}/test-failover", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def test_failover(name: str, body: schemas.FailoverTestIn, request: Request, response: Response,
                  vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Boot a throw-away copy of a point on the isolated network; replication goes on. Its
    first step checks the point's readiness for the target: a failing requirement fails the job
    before anything is made, unless ``{"force_readiness": true, "reason": "..."}`` (the reason
    and what failed are recorded in the readiness step and the item's state)."""
    params = {"point": body.point, "target": body.target, "boot_timeout": body.boot_timeout,
              **_readiness_force(body)}
    return _accepted(request, response, vault,
                     lambda v: failover.start_job(v, "test-failover", name, **params))


def _readiness_force(body: schemas.FailoverTestIn) -> dict[str, Any]:
    """The readiness options of a (test) failover: the forced reason, the fix-ups asked for."""
    reason = body.readiness_force_reason
    return {"fixups": list(body.fixups), **({} if reason is None else {"readiness_force_reason": reason})}


@router.post("/machines/{name}/test-cleanup", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def test_cleanup(name: str, request: Request, response: Response, vault: VaultDep,
                 _: Operator) -> dict[str, Any]:
    """Remove the test machine and its disks; the item goes back to protected."""
    return _accepted(request, response, vault, lambda v: failover.start_job(v, "test-cleanup", name))


@router.post("/machines/{name}/failover", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def do_failover(name: str, body: schemas.FailoverIn, request: Request, response: Response,
                vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Fail over to the target: readiness, final sync (for ``latest``), boot, then copy the
    disks over. A failing readiness requirement fails the job before the source is shut down,
    unless ``{"force_readiness": true, "reason": "..."}`` (the reason and what failed are
    recorded in the readiness step and the item's state)."""
    params = {"point": body.point, "target": body.target, "boot_timeout": body.boot_timeout,
              "shutdown_source": body.shutdown_source, **_readiness_force(body)}
    return _accepted(request, response, vault, lambda v: failover.start_job(v, "failover", name, **params))


@router.post("/machines/{name}/complete", response_model=schemas.JobOut, status_code=202,
             responses=JOB_RESPONSE, tags=["failover"])
def complete(name: str, request: Request, response: Response, vault: VaultDep, _: Operator,
             body: schemas.ForceIn | None = None) -> dict[str, Any]:
    """Finish a migration: purge the replica data, keep the migrated machine. Refused (409, with
    what failed) unless the verdict of the item's last failover passed, or ``{"force": true,
    "reason": "..."}``: the reason is recorded in the job (its ``forced``) and the item's state."""
    reason = body.force_reason if body else None
    return _accepted(request, response, vault,
                     lambda v: failover.start_job(v, "complete", name, force_reason=reason))


# -- probes: what a failed-over machine must answer besides booting (its verdict) ---------------------


@router.get("/machines/{name}/probes", response_model=list[schemas.ProbeOut], tags=["probes"])
def list_probes(name: str, vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """The item's probes, in the order a (test) failover runs them after the boot."""
    return [views.probe_view(c) for c in verdicts.list_checks(vault, name)]


@router.post("/machines/{name}/probes", response_model=schemas.ProbeOut, status_code=201, tags=["probes"])
def add_probe(name: str, body: schemas.ProbeIn, vault: VaultDep, caller: Operator) -> dict[str, Any]:
    """Add a probe (400 with what is wrong; 409 for a name the item has). A ``script`` probe runs
    a program on the rehost server, so it needs an admin and an existing file (absolute path)."""
    fields = body.model_dump()
    if body.kind == "script":
        if not caller.may(Role.admin):
            raise Forbidden(f"token {caller.name!r} has the {caller.role.name} role; a script probe runs a "
                            "program on the rehost server and needs admin")
        resolved = roots.confine(vault, body.script or "", "script")
        if not resolved.is_file():
            raise UsageError(f"script {body.script!r}: no such file on the rehost server")
        fields["script"] = str(resolved)
    elif body.script:
        raise UsageError(f"probe {body.name}: a {body.kind} probe takes no script")
    check = verdicts.add_check(vault, name, Check(**fields))
    return views.probe_view(check)


@router.delete("/machines/{name}/probes/{probe}", status_code=204, tags=["probes"], response_class=Response)
def remove_probe(name: str, probe: str, vault: VaultDep, _: Operator) -> Response:
    """Remove a probe (404 naming the item's probes when it has none by that name)."""
    verdicts.remove_check(vault, name, probe)
    return Response(status_code=204)
