"""What the API and the dashboard show, built from the services in one place.

The machine dict is ``rehost machines --json``'s (``rehost.vault.overview``); ``job_view``
is the CLI's ``job_dict`` (``rehost.jobs.views``) without tracebacks. Pages and JSON both come
from here, so a field means the same thing everywhere.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from rehost.guest.probes import Check
from rehost.jobs.models import JobRow
from rehost.jobs.runner import effective_state, list_jobs
from rehost.jobs.views import first_line, job_dict
from rehost.repository.manifest import RecoveryPoint
from rehost.vault import inventory, targets
from rehost.vault.models import TargetRow, TokenRow
from rehost.vault.overview import machine_view, machine_views
from rehost.vault.vault import Vault

#: the scheduler beats every tick; older than this and `rehost serve` is not replicating
SCHEDULER_STALE_S = 60.0


def machine_detail(vault: Vault, name: str) -> dict[str, Any]:
    m = inventory.get_machine(vault, name)
    view = machine_view(vault, m)  # its point summary: no manifest decoded
    if m.target_id:
        view["assigned_target"] = next((t.name for t in targets.list_targets(vault) if t.id == m.target_id),
                                       None)
    return view


def point_view(p: RecoveryPoint) -> dict[str, Any]:
    """A point as ``rehost points --json`` shows it."""
    return {"id": p.id, "time": p.time, "consistency": p.consistency.value, "sequence": p.sequence,
            "disks": [{"index": d.index, "size": d.size, "full": d.full} for d in p.disks]}


def source_views(vault: Vault) -> list[dict[str, Any]]:
    """Sources with the machines they hold (an image source holds exactly one)."""
    out: dict[str, dict[str, Any]] = {}
    for m in inventory.list_machines(vault):
        src = out.setdefault(m.source.name, {"name": m.source.name, "kind": m.source.kind,
                                             "settings": m.source.settings, "machines": []})
        src["machines"].append(m.name)
    return sorted(out.values(), key=lambda s: s["name"])


def target_view(t: TargetRow) -> dict[str, Any]:
    return {"name": t.name, "kind": t.kind, "settings": t.settings, "verified_ok": t.verified_ok,
            "verified_at": t.verified_at, "verify_report": t.verify_report}


def token_view(t: TokenRow) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "created_at": t.created_at, "last_used": t.last_used,
            "expires_at": t.expires_at}


TRACEBACK = "\nTraceback (most recent call last):"


def without_traceback(text: str) -> str:
    """The runner records an internal error with its traceback, for ``rehost job ID`` on the
    server; over HTTP only the error line goes out (no code paths, no locals)."""
    head, _, _ = text.partition(TRACEBACK)
    return head


def verdict_view(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """A job's verdict when it has one of the expected shape (older jobs have none)."""
    v = outputs.get("verdict")
    if not isinstance(v, dict) or not isinstance(v.get("checks", []), list):
        return None
    return {"ok": bool(v.get("ok")), "checks": [dict(c) for c in v.get("checks", []) if isinstance(c, dict)]}


def forced_view(params: dict[str, Any]) -> dict[str, str] | None:
    """A complete job (a machine's or a plan's) started without a passing verdict: the
    operator's reason and what was missing, as recorded in the job's params."""
    forced = params.get("forced")
    if isinstance(forced, dict) and forced.get("reason"):
        return {"reason": str(forced["reason"]), "why": str(forced.get("why", ""))}
    records = params.get("verdicts")
    if params.get("force_reason") and isinstance(records, dict):  # a plan's complete
        whys = [f"{m}: {r['forced'].get('why', '')}" for m, r in records.items()
                if isinstance(r, dict) and isinstance(r.get("forced"), dict)]
        if whys:
            return {"reason": str(params["force_reason"]), "why": "; ".join(whys)}
    return None


def job_view(vault: Vault, job: JobRow) -> dict[str, Any]:
    view = job_dict(vault, job)
    view["error"] = without_traceback(view["error"])
    for step in view["steps"]:
        step["detail"] = without_traceback(step["detail"])
    view["verdict"] = verdict_view(job.outputs or {})
    view["forced"] = forced_view(job.params or {})
    return view


#: the jobs whose verdict an item page shows: the newest of them
VERDICT_KINDS = ("failover", "test-failover")


def last_verdict(vault: Vault, name: str) -> dict[str, Any] | None:
    """The item's newest (test) failover job and its verdict (None before its checks ran)."""
    machine_id = inventory.get_machine(vault, name).id
    with vault.session() as s:
        job = s.scalar(select(JobRow).where(JobRow.machine_id == machine_id, JobRow.kind.in_(VERDICT_KINDS))
                       .order_by(JobRow.created_at.desc()).limit(1))
    if job is None:
        return None
    return {"job": job.id, "kind": job.kind, "state": effective_state(job),
            "verdict": verdict_view(job.outputs or {})}


def probe_view(check: Check) -> dict[str, Any]:
    return {**check.to_json(), "description": check.describe()}


def job_views(vault: Vault, machine: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    machine_id = inventory.get_machine(vault, machine).id if machine else None
    return [job_view(vault, j) for j in list_jobs(vault, machine_id, limit)]


def overview(vault: Vault, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The landing page's numbers: items by health and state, the worst RPO, and what needs
    someone's attention (items behind, failed jobs, targets that failed verification)."""
    items = machine_views(vault) if items is None else items
    alerts: list[dict[str, str]] = []
    for it in items:
        h = it["health"]
        if h["status"] in ("warning", "critical"):
            alerts.append({"severity": h["status"], "subject": it["name"], "message": h["reason"]})
    for j in list_jobs(vault, limit=20):
        if j.state == "failed":
            alerts.append({"severity": "warning", "subject": f"job {j.id}",
                           "message": f"{j.kind} of {j.machine_name} failed: {first_line(j.error)}"})
    for t in targets.list_targets(vault):
        if t.verified_ok is False:
            alerts.append({"severity": "critical", "subject": f"target {t.name}",
                           "message": "failed verification: failovers to it are refused"})
    beat = vault.scheduler_heartbeat()
    running = beat is not None and (datetime.now(UTC) - beat).total_seconds() < SCHEDULER_STALE_S
    if not running and any(it["policy"] for it in items):
        alerts.append({"severity": "warning", "subject": "scheduler",
                       "message": "no scheduler is running: items with a policy do not replicate "
                                  "(start rehost serve)"})
    rpos = [it["health"]["rpo_seconds"] for it in items if it["health"]["rpo_seconds"] is not None]
    return {
        "items": len(items),
        "by_health": dict(Counter(it["health"]["status"] for it in items)),
        "by_state": dict(Counter(it["state"] for it in items)),
        "worst_rpo_seconds": max(rpos) if rpos else None,
        "scheduler_running": running,
        "alerts": alerts,
    }
