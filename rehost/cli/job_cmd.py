"""rehost jobs | job ID [--watch] | job resume ID | job cancel ID — and the live job view."""

from __future__ import annotations

import time
from typing import Any

import typer

from rehost.cli.context import emit_json, err, open_vault, out
from rehost.errors import UsageError
from rehost.jobs.models import JobRow, StepRow
from rehost.jobs.runner import can_cancel, cancel_job, effective_state, get_job, list_jobs, run_job
from rehost.vault.vault import Vault

_MARK = {"succeeded": "[green]✓[/]", "failed": "[red]✗[/]", "warning": "[yellow]![/]",
         "skipped": "[dim]-[/]", "running": "[cyan]…[/]", "pending": " "}


def register(app: typer.Typer) -> None:
    app.command("jobs")(jobs)
    app.command("job")(job)


def job_dict(vault: Vault, j: JobRow) -> dict[str, Any]:
    return {
        "id": j.id, "kind": j.kind, "machine": j.machine_name, "state": effective_state(j),
        "created_at": j.created_at, "started_at": j.started_at, "ended_at": j.ended_at, "error": j.error,
        "cancellable": effective_state(j) not in ("succeeded", "cancelled") and can_cancel(vault, j),
        "steps": [{"name": s.name, "title": s.title, "state": s.state, "done": s.done, "total": s.total,
                   "detail": s.detail, "started_at": s.started_at, "ended_at": s.ended_at} for s in j.steps],
    }


class ConsoleObserver:
    """Prints each step as it ends: the CLI's view of a job."""

    def step_started(self, job: JobRow, step: StepRow) -> None:
        err.print(f"  [cyan]…[/] {step.title}", highlight=False)

    def step_progress(self, job: JobRow, step: StepRow) -> None:
        pass

    def step_ended(self, job: JobRow, step: StepRow) -> None:
        secs = (step.ended_at - step.started_at).total_seconds() if step.ended_at and step.started_at else 0
        first = (step.detail or "").splitlines()[0] if step.detail else ""
        err.print(f"  {_MARK.get(step.state, '?')} {step.title} ({secs:.1f}s) {first}", highlight=False)


def print_job(vault: Vault, j: JobRow) -> None:
    out.print(f"job {j.id}  {j.kind} {j.machine_name}  [bold]{effective_state(j)}[/]", highlight=False)
    for s in j.steps:
        prog = f" {s.done * 100 // s.total}%" if s.total and s.state == "running" else ""
        first = (s.detail or "").splitlines()[0] if s.detail else ""
        out.print(f"  {_MARK.get(s.state, '?')} {s.title}{prog}  [dim]{first}[/]", highlight=False)
    if effective_state(j) == "interrupted":
        out.print(f"  interrupted (its process is gone): resume with rehost job resume {j.id}")
    if j.error:
        out.print(f"  error: {j.error.splitlines()[0]}", highlight=False, markup=False)


def jobs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List jobs, newest first."""
    with open_vault(ctx) as vault:
        rows = list_jobs(vault)
        data = [job_dict(vault, j) for j in rows]
    if as_json:
        emit_json(data)
        return
    for d in data:
        current = next((s["title"] for s in d["steps"] if s["state"] == "running"), "")
        out.print(f"{d['id']}  {d['kind']:14} {d['machine']:16} {d['state']:12} {current}")


def job(
    ctx: typer.Context,
    what: str = typer.Argument(..., metavar="ID | resume ID | cancel ID"),
    job_id: str = typer.Argument(None, metavar="[ID]"),
    watch: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job with its steps; resume an interrupted or failed one; cancel one not yet past
    its point of no return."""
    if what in ("resume", "cancel"):
        if not job_id:
            raise UsageError(f"rehost job {what} needs a job id (see: rehost jobs)")
        (resume if what == "resume" else cancel)(ctx, job_id)
        return
    if job_id:
        raise UsageError(f"unexpected {job_id!r}: use rehost job ID, job resume ID or job cancel ID")
    with open_vault(ctx) as vault:
        while True:
            j = get_job(vault, what)
            if as_json:
                emit_json(job_dict(vault, j))
            else:
                print_job(vault, j)
            if not watch or effective_state(j) not in ("running", "queued"):
                break
            time.sleep(1)


def resume(ctx: typer.Context, job_id: str) -> None:
    with open_vault(ctx) as vault:
        j = run_job(vault, get_job(vault, job_id).id, ConsoleObserver())
        print_job(vault, j)
        if j.state != "succeeded":
            raise typer.Exit(1)


def cancel(ctx: typer.Context, job_id: str) -> None:
    with open_vault(ctx) as vault:
        j = cancel_job(vault, job_id)
    out.print(f"job {j.id} cancelled")
