"""A failed-over machine's verdict: did it boot, and do its services answer (issue 15).

Each machine carries named checks (``rehost probe add``): TCP ports that must send bytes
back, HTTP requests with a status and a body fragment, scripts run on the rehost host. A
(test) failover runs them against the machine on its target network, after the boot
verdict, and keeps the result in the job (``outputs["verdict"]``). ``complete`` asks for the
last failover's verdict to have passed: a migration is not declared done on a machine
nobody saw working, unless an operator says why (``--force --reason``), which is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from rehost.errors import AlreadyExists, InvalidState, NotFound, RehostError, UsageError
from rehost.guest.probes import Check, Result, probe
from rehost.jobs.models import JobRow
from rehost.targets.base import Placement, Target
from rehost.vault.inventory import get_machine
from rehost.vault.models import MachineRow
from rehost.vault.plan_actions import run_with_context
from rehost.vault.vault import Vault

MAX_CHECKS = 32


def list_checks(vault: Vault, machine: str) -> list[Check]:
    return [Check.from_json(c) for c in get_machine(vault, machine).checks or []]


def add_check(vault: Vault, machine: str, check: Check) -> Check:
    row_id = get_machine(vault, machine).id
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, row_id)
        assert row is not None
        checks = list(row.checks or [])
        if any(c["name"] == check.name for c in checks):
            raise AlreadyExists(f"{machine} already has a check named {check.name!r}")
        if len(checks) >= MAX_CHECKS:
            raise UsageError(f"{machine} has {MAX_CHECKS} checks already; remove one first")
        row.checks = [*checks, check.to_json()]
    return check


def remove_check(vault: Vault, machine: str, name: str) -> None:
    row_id = get_machine(vault, machine).id
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, row_id)
        assert row is not None
        checks = list(row.checks or [])
        if not any(c["name"] == name for c in checks):
            known = ", ".join(c["name"] for c in checks) or "none"
            raise NotFound(f"{machine} has no check named {name!r} (checks: {known})")
        row.checks = [c for c in checks if c["name"] != name]


def ports_of(checks: Sequence[Check]) -> list[int]:
    """The guest ports the checks reach: the target forwards or exposes these at start."""
    return sorted({c.port for c in checks if c.kind in ("tcp", "http")})


def run_checks(machine: str, checks: Sequence[Check], target: Target, placement: Placement,
               boot_detail: str) -> dict[str, Any]:
    """Every check of the machine, in order, each with its own verdict (one failing does not
    hide the others); the boot comes first, as it was seen."""
    results = [Result("boot", "boot", True, boot_detail, machine)]
    for c in checks:
        if c.kind == "script":
            endpoints = {str(p): list(e) for p in ports_of(checks)
                         if (e := target.endpoint(placement, p)) is not None}
            try:
                ran = run_with_context(c.script, f"check {c.name} of {machine} ({c.script})",
                                     {"REHOST_MACHINE": machine, "REHOST_CHECK": c.name},
                                     {"machine": machine, "placement": placement.to_json(),
                                      "endpoints": endpoints},
                                     "REHOST_CHECK_CONTEXT", c.timeout_s)
                last = ran.output.strip().splitlines()[-1:] or ["(no output)"]
                results.append(Result(c.name, c.kind, True, f"exit 0: {last[0][:200]}", machine))
            except RehostError as e:
                results.append(Result(c.name, c.kind, False, str(e)[:500], machine))
            continue
        where = target.endpoint(placement, c.port)
        if where is None:
            results.append(Result(c.name, c.kind, False,
                                  f"target {target.kind} gives no way to reach port {c.port} of "
                                  f"{placement.vm} from this host", machine))
            continue
        seen = probe(c, *where)
        results.append(Result(seen.name, seen.kind, seen.ok, seen.detail, machine))
    return verdict(results)


def verdict(results: Sequence[Result]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in results), "checks": [r.to_json() for r in results],
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def failures(v: dict[str, Any]) -> str:
    return "; ".join(f"{c.get('machine') or ''}{'/' if c.get('machine') else ''}{c['name']}: {c['detail']}"
                     for c in v.get("checks", []) if not c["ok"])


def last_failover(vault: Vault, machine_id: str) -> JobRow | None:
    with vault.session() as s:
        return s.scalar(select(JobRow).where(JobRow.machine_id == machine_id, JobRow.kind == "failover")
                        .order_by(JobRow.created_at.desc()).limit(1))


def verdict_of(job: JobRow) -> dict[str, Any] | None:
    """The job's verdict; a failover made before checks existed passed if it saw the boot."""
    v = (job.outputs or {}).get("verdict")
    if v is None and (job.outputs or {}).get("boot_line"):
        return {"ok": True, "checks": [{"name": "boot", "kind": "boot", "ok": True,
                                        "detail": job.outputs["boot_line"], "machine": ""}]}
    return dict(v) if v is not None else None


def require_passing(vault: Vault, machine: str, force_reason: str | None) -> dict[str, Any]:
    """What ``complete`` records: the passing verdict it relied on, or the operator's reason
    for going on without one. Refused (naming the failed checks) otherwise."""
    row = get_machine(vault, machine)
    job = last_failover(vault, row.id)
    v = verdict_of(job) if job is not None else None
    if v is not None and v["ok"]:
        return {"verdict_job": job.id if job else None, "verdict": "passed"}
    if job is None:
        why = "it has no failover job"
    elif v is None:
        why = f"its last failover (job {job.id}, {job.state}) has no verdict"
    else:
        why = f"the verdict of its last failover (job {job.id}) failed: {failures(v)}"
    if force_reason is not None:
        if not force_reason.strip():
            raise UsageError("--force needs --reason TEXT: why the migration is complete without a "
                             "passing verdict (it is recorded)")
        return {"verdict_job": job.id if job else None, "verdict": "forced",
                "forced": {"reason": force_reason.strip(), "why": why}}
    raise InvalidState(f"cannot complete {machine}: {why}. Fix it and fail over again, or "
                       f"rehost complete {machine} --force --reason TEXT (recorded)")
