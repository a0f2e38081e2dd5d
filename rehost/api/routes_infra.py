"""Targets, policies and tokens: the setup admins change and everyone may read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response

from rehost.api import schemas, tokens, views
from rehost.api.auth import Admin, Operator, Reader, VaultDep
from rehost.replication.retention import parse_duration
from rehost.sources import registry
from rehost.targets import registry as target_registry
from rehost.vault import inventory, policies, roots, targets

router = APIRouter(tags=["infrastructure"])


@router.get("/targets", response_model=list[schemas.TargetOut])
def list_targets(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    """Targets and their last verification (a target that failed is refused by failover)."""
    return [views.target_view(t) for t in targets.list_targets(vault)]


@router.post("/targets/local", response_model=schemas.TargetOut, status_code=201)
def add_local_target(body: schemas.AddLocalTargetIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Register the rehost server's own QEMU as a target; machines live under ``path``."""
    row = targets.add_local_target(vault, body.name, Path(body.path), accel=body.accel,
                                   memory_mib=body.memory_mib, confine=roots.guard(vault))
    return views.target_view(targets.get_target(vault, row.name))


@router.get("/targets/kinds", response_model=list[schemas.TargetKindOut])
def list_target_kinds(_: Reader) -> list[dict[str, Any]]:
    """The kinds of target, their options (``config`` of ``POST /targets``) and capabilities."""
    return target_registry.describe()


@router.post("/targets", response_model=schemas.TargetOut, status_code=201)
def add_target(body: schemas.AddTargetIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Register a target of any kind; ``config`` is validated by the kind's typed config (as
    ``rehost target add KIND``): a bad option is a 400 naming it, the vault untouched."""
    row = targets.add_target(vault, body.kind, body.name, body.config, confine=roots.guard(vault))
    return views.target_view(targets.get_target(vault, row.name))


@router.post("/targets/{name}/verify", response_model=schemas.VerifyOut)
def verify_target(name: str, vault: VaultDep, _: Operator) -> dict[str, Any]:
    """Check compute, storage and networks; the verdict is remembered. A failed check is a
    200 with ``ok: false`` and the reasons, not an error of the request."""
    report = targets.verify_target(vault, name)
    checks = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]
    return {"ok": report.ok, "checks": checks}


@router.get("/sources/kinds", response_model=list[schemas.SourceKindOut])
def list_source_kinds(_: Reader) -> list[dict[str, Any]]:
    """The kinds of source, their options (``config`` of ``POST /sources``) and capabilities."""
    return registry.describe()


@router.post("/sources", response_model=schemas.SourceAddedOut, status_code=201)
def add_source(body: schemas.AddSourceIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Register a machine from a source of any kind; ``config`` is validated by the kind's typed
    config (as ``rehost source add KIND``): a bad option is a 400 naming it, the vault untouched."""
    done = inventory.add_source(vault, body.kind, body.name or "", body.config, confine=roots.guard(vault))
    invitation = dataclasses.asdict(done.invitation) if done.invitation is not None else None
    return {"machine": views.machine_detail(vault, done.machine.name), "invitation": invitation}


@router.get("/sources/{name}/verify", response_model=schemas.SourceVerifyOut)
def verify_source(name: str, vault: VaultDep, _: Reader) -> dict[str, Any]:
    """What the vault holds of a source (the source is not contacted) and, for one that maps its
    VM networks (Hyper-V with VMM), where a failover attaches each network; ``ok`` is false
    while one is unmapped (as ``rehost source verify``)."""
    from rehost.vault.source_check import verify_source as check

    return check(vault, name).to_json()


@router.post("/sources/{name}/network-map", response_model=schemas.SourceVerifyOut)
def map_source_networks(name: str, body: schemas.NetworkMapIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Add or change VM network -> target network pairs of a source that keeps its own map."""
    from rehost.vault.source_check import map_networks

    return map_networks(vault, name, dict(body.pairs)).to_json()


@router.get("/policies", response_model=list[schemas.PolicyOut])
def list_policies(vault: VaultDep, _: Reader) -> list[dict[str, Any]]:
    return [policies.policy_json(p) for p in policies.list_policies(vault)]


@router.post("/policies", response_model=schemas.PolicyOut, status_code=201)
def create_policy(body: schemas.PolicyIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """A replication policy (defaults: RPO 5m, retention 24h, crash-consistent every 30s)."""
    p = policies.create_policy(vault, body.name, rpo_threshold=body.rpo_threshold, retention=body.retention,
                               app_every=body.app_consistent_every, crash_every=body.crash_consistent_every,
                               bandwidth=body.bandwidth, bandwidth_schedule=body.bandwidth_schedule)
    return policies.policy_json(p)


@router.patch("/policies/{name}", response_model=schemas.PolicyOut)
def update_policy(name: str, body: schemas.PolicyFields, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Change what is given; running replication picks it up at its next tick."""
    p = policies.update_policy(vault, name, rpo_threshold=body.rpo_threshold, retention=body.retention,
                               app_every=body.app_consistent_every, crash_every=body.crash_consistent_every,
                               bandwidth=body.bandwidth, bandwidth_schedule=body.bandwidth_schedule)
    return policies.policy_json(p)


@router.post("/policies/{name}/attach", response_model=schemas.MachineOut)
def attach_policy(name: str, body: schemas.AttachIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """Replicate a machine continuously under this policy (with ``rehost serve``)."""
    policies.attach(vault, body.machine, name)
    return views.machine_detail(vault, body.machine)


@router.get("/tokens", response_model=list[schemas.TokenOut], tags=["tokens"])
def list_tokens(vault: VaultDep, _: Admin) -> list[dict[str, Any]]:
    return [views.token_view(t) for t in tokens.list_tokens(vault)]


@router.post("/tokens", response_model=schemas.TokenCreatedOut, status_code=201, tags=["tokens"])
def create_token(body: schemas.TokenIn, vault: VaultDep, _: Admin) -> dict[str, Any]:
    """A new token; its secret is in this response only (the vault keeps a hash)."""
    expires = parse_duration(body.expires) if body.expires else None
    row, secret = tokens.create_token(vault, body.name, body.role, expires)
    return {**views.token_view(row), "token": secret}


@router.delete("/tokens/{name}", status_code=204, tags=["tokens"], response_class=Response)
def revoke_token(name: str, vault: VaultDep, _: Admin) -> Response:
    """Revoke a token at once; requests with it get 401 from now on."""
    tokens.revoke_token(vault, name)
    return Response(status_code=204)
