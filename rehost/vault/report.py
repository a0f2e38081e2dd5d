"""The migration report (issue 18): what the people who update documentation, DNS, inventory
and backups need after a migration, gathered from the vault's own records.

Everything comes from rows that outlive the replica data: the machine (its spec and placement),
its jobs (the failover's steps and timings, the point it chose, its verdict; what completion
removed) and the target. So the report can be made after ``complete`` purged every point, and
again months later. Rendering is the edges' business (``rehost report``, the dashboard).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rehost.jobs.models import JobRow
from rehost.jobs.runner import list_jobs
from rehost.vault import plan_jobs, plans, targets
from rehost.vault.inventory import get_machine, spec_of
from rehost.vault.vault import Vault

#: how a boot line or a target states the guest's address ("REHOST-NET ip=10.0.2.15/24")
_IP = re.compile(r"\bip=([0-9a-fA-F.:]+(?:/[0-9]+)?)")


def _when(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 1)


def _newest(jobs: list[JobRow], kind: str, *, succeeded: bool = False) -> JobRow | None:
    for j in jobs:  # newest first
        if j.kind == kind and (not succeeded or j.state == "succeeded"):
            return j
    return None


def _job(job: JobRow | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"id": job.id, "kind": job.kind, "state": job.state, "actor": job.actor,
            "started_at": _when(job.started_at), "ended_at": _when(job.ended_at),
            "seconds": _seconds(job.started_at, job.ended_at), "error": _first(job.error),
            "steps": [{"name": s.name, "title": s.title, "state": s.state, "started_at": _when(s.started_at),
                       "seconds": _seconds(s.started_at, s.ended_at), "detail": _first(s.detail)}
                      for s in job.steps]}


def _first(text: str | None) -> str:
    return text.splitlines()[0] if text else ""


def _new_addresses(placement: dict[str, Any], failover: JobRow | None) -> list[str]:
    found: list[str] = []
    for key, value in (placement.get("details") or {}).items():
        if "ip" in key.lower() and isinstance(value, str) and value:
            found.append(value)
    if failover is not None:
        found += _IP.findall(str((failover.outputs or {}).get("boot_line", "")))
        for s in failover.steps:
            found += _IP.findall(s.detail or "")
    return list(dict.fromkeys(found))


def machine_report(vault: Vault, name: str) -> dict[str, Any]:
    """One machine's migration as it stands (before or after completion)."""
    m = get_machine(vault, name)
    spec = spec_of(m)
    jobs = list_jobs(vault, m.id, limit=500)
    failover = _newest(jobs, "failover", succeeded=True) or _newest(jobs, "failover")
    complete = _newest(jobs, "complete", succeeded=True)
    test = _newest(jobs, "test-failover")
    placement = dict(m.placement or {})
    target_name = placement.get("target_name") or (failover.params.get("target") if failover else None)
    target = next((t for t in targets.list_targets(vault) if t.name == target_name), None)
    point_step = next((s for s in failover.steps if s.name == "choose_point"), None) if failover else None
    verdict = (failover.outputs or {}).get("verdict") if failover else None
    forced = (complete.params or {}).get("forced") if complete else None
    removed = [f"{s.title}: {_first(s.detail)}" for s in complete.steps
               if s.state == "succeeded" and s.name in ("purge", "drop_replicas")] if complete else []
    old = [{"mac": n.mac, "network": n.network, "addresses": list(n.addresses)} for n in spec.nics]
    new = _new_addresses(placement, failover)
    report = {
        "machine": m.name, "state": m.state, "state_reason": m.state_reason,
        "made_at": _when(datetime.now(UTC)),
        "source": {"name": m.source.name, "kind": m.source.kind},
        "hardware": {"cpus": spec.cpus, "memory_mib": spec.memory_mib, "firmware": spec.firmware.value},
        "disks": [{"index": d.index, "size": d.size, "format": d.format}
                  for d in sorted(m.disks, key=lambda d: d.index)],
        "target": {"name": target_name, "kind": target.kind if target else None,
                   "vm": placement.get("vm"), "location": placement.get("location"),
                   "network": placement.get("network")},
        "point": {"id": (failover.outputs or {}).get("point") if failover else None,
                  "chosen": point_step.detail if point_step else None},
        "addresses": {"old": old, "new": new},
        "verdict": verdict, "forced": forced,
        "test_failover": _job(test), "failover": _job(failover), "complete": _job(complete),
        "removed": removed,
    }
    report["to_do"] = _to_do(report)
    return report


def _to_do(r: dict[str, Any]) -> list[str]:
    """The seed's post-migration steps that rehost cannot do itself, for this machine."""
    name, source, target = r["machine"], r["source"], r["target"]
    todo: list[str] = []
    if r["failover"] is None or r["failover"]["state"] != "succeeded":
        return [f"fail {name} over first: rehost failover {name} [--shutdown-source]"]
    if r["verdict"] is not None and not r["verdict"].get("ok"):
        todo.append(f"the failover's verdict failed: look at the application on {name} before anything else")
    if r["state"] != "migration_completed":
        todo.append(f"complete the migration once the application is accepted: rehost complete {name}")
    where = ", ".join(r["addresses"]["new"]) or target.get("location") or "its new place"
    todo.append(f"update DNS records and internal documentation: {name} now runs on {target['name']} "
                f"({target['kind']}) at {where}")
    kind = source["kind"]
    if kind == "physical":
        todo.append(f"uninstall the rehost agent from the source server {name} (systemctl disable --now "
                    "rehost-agent; remove its package), then retire or repurpose the server")
    elif kind == "vsphere":
        todo.append(f"remove the VM {name} from the vCenter inventory (it stays powered off); uninstall "
                    "VMware Tools on the migrated machine if it is no longer on VMware")
    elif kind == "qemu":
        todo.append(f"remove the source VM {name} from its hypervisor's inventory")
    else:
        todo.append(f"archive or delete the exported images of {name} (source {source['name']})")
    todo.append(f"remove the source of {name} from backups and monitoring; add the migrated machine to them")
    return todo


def plan_report(vault: Vault, name: str) -> dict[str, Any]:
    """Every machine of a plan, in group order, with the plan's own newest failover job."""
    plan = plans.show(vault, name)
    jobs = [j for j in list_jobs(vault, None, limit=500) if j.machine_id is None and j.machine_name == name]
    failover = next((j for j in jobs if j.kind == plan_jobs.FAILOVER), None)
    members = [m for g in plan.groups for m in g.machines]
    return {"plan": name, "made_at": _when(datetime.now(UTC)), "failover": _job(failover),
            "machines": [machine_report(vault, m) for m in members]}
