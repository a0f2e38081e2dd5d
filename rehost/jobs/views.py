"""A job as every edge shows it: the JSON of ``rehost job ID --json`` and the API, and the
plain-text summary that ``rehost job ID`` prints locally and against a remote server.

Built here, below the edges, so the CLI, the API and the dashboard share one shape without
importing each other; the text works on the JSON dict, which is all a remote CLI has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rehost.jobs.models import JobRow
from rehost.jobs.runner import can_cancel, effective_state
from rehost.units import human
from rehost.vault.vault import Vault

#: one character per step state, for terminals and logs alike
MARK = {"succeeded": "✓", "failed": "✗", "warning": "!", "skipped": "-", "running": "…", "pending": " "}


def job_dict(vault: Vault, j: JobRow) -> dict[str, Any]:
    """The job with its steps; ``vault`` answers whether it may be cancelled now."""
    state = effective_state(j)
    return {
        "id": j.id, "kind": j.kind, "machine": j.machine_name, "state": state,
        "created_at": j.created_at, "started_at": j.started_at, "ended_at": j.ended_at, "error": j.error,
        "actor": j.actor,
        "cancellable": state not in ("succeeded", "cancelled") and can_cancel(vault, j),
        "steps": [{"name": s.name, "title": s.title, "state": s.state, "done": s.done, "total": s.total,
                   "detail": s.detail, "started_at": s.started_at, "ended_at": s.ended_at} for s in j.steps],
    }


def first_line(text: str | None) -> str:
    """A step's detail or a job's error may carry a traceback: summaries show the first line."""
    return text.splitlines()[0] if text else ""


def job_row(job: dict[str, Any]) -> str:
    """One line of ``rehost jobs``: id, kind, machine, state and the step running now."""
    current = next((s["title"] for s in job["steps"] if s["state"] == "running"), "")
    return f"{job['id']}  {job['kind']:14} {job['machine']:16} {job['state']:12} {current}"


def progress_text(step: dict[str, Any], now: datetime | None = None) -> str:
    """`` 37% (380 MiB of 1.0 GiB, 95 MiB/s)``: the rate is the step's average so far."""
    done, total = int(step["done"]), int(step["total"])
    text = f" {done * 100 // total}% ({human(done)} of {human(total)}"
    started = step.get("started_at")
    if isinstance(started, str):  # a remote CLI's JSON
        try:
            started = datetime.fromisoformat(started.replace("Z", "+00:00"))
        except ValueError:
            started = None
    if isinstance(started, datetime):
        began = started if started.tzinfo else started.replace(tzinfo=UTC)
        secs = ((now or datetime.now(UTC)) - began).total_seconds()
        if secs > 0 and done:
            text += f", {human(int(done / secs))}/s"
    return text + ")"


def job_lines(job: dict[str, Any]) -> list[str]:
    """``job_dict``'s shape as plain text (no markup: a step's detail may hold brackets)."""
    lines = [f"job {job['id']}  {job['kind']} {job['machine']}  {job['state']}"]
    for s in job["steps"]:
        running = s["total"] and s["state"] == "running"
        prog = progress_text(s) if running else ""
        lines.append(f"  {MARK.get(s['state'], '?')} {s['title']}{prog}  {first_line(s['detail'])}")
    if job["state"] == "interrupted":
        lines.append(f"  interrupted (its process is gone): resume with rehost job resume {job['id']}")
    if job["error"]:
        lines.append(f"  error: {first_line(job['error'])}")
    return lines
