"""rehost jobs | job ID [--watch] | job resume ID | job cancel ID — and the live job view."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from rehost.cli.context import WIDTH, emit_json, err, open_vault, out, real_console, wrapped
from rehost.errors import UsageError
from rehost.jobs import dispatch
from rehost.jobs.models import JobRow, StepRow
from rehost.jobs.runner import cancel_job, get_job, list_jobs
from rehost.jobs.views import MARK, first_line, job_lines, job_row
from rehost.jobs.views import job_dict as job_dict  # re-exported: failover_cmd's --json still takes it here

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

WATCH_S = 1.0
_COLOR = {"succeeded": "green", "failed": "red", "warning": "yellow", "skipped": "dim", "running": "cyan"}


def register(app: typer.Typer) -> None:
    app.command("jobs")(jobs)
    app.command("job")(job)


class ConsoleObserver:
    """Prints each step as it starts and ends, and a progress bar (bytes done of the total, the
    rate, the time left) while a step that counts bytes runs: the CLI's view of a job."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def step_started(self, job: JobRow, step: StepRow) -> None:
        err.print(f"  {_mark('running')} {step.title}", highlight=False)

    def step_progress(self, job: JobRow, step: StepRow) -> None:
        if not step.total:
            return
        if self._bar is None:
            from rich.progress import (  # rich on first use: context._LazyConsole
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn("    {task.description}"), BarColumn(), TaskProgressColumn(),
                                 DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=real_console(err), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(step.title, total=step.total)
        assert self._task is not None
        self._bar.update(self._task, completed=step.done, total=step.total)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._task = None, None

    def step_ended(self, job: JobRow, step: StepRow) -> None:
        self._close_bar()
        secs = (step.ended_at - step.started_at).total_seconds() if step.ended_at and step.started_at else 0
        err.print(f"  {_mark(step.state)} {step.title} ({secs:.1f}s) {first_line(step.detail)}",
                  highlight=False)


def _mark(state: str) -> str:
    """The live view's colored step mark (the printed summaries stay plain)."""
    return f"[{_COLOR.get(state, 'default')}]{MARK.get(state, '?')}[/]"


def print_job(view: dict[str, Any]) -> None:
    for line in job_lines(view):
        lead = len(line) - len(line.lstrip())
        for part in wrapped(line.strip(), " " * lead) if len(line) > WIDTH else [line]:
            out.print(part, highlight=False, markup=False)


def show(fetch: Callable[[], dict[str, Any]], *, as_json: bool, watch: bool) -> None:
    """``rehost job ID [--watch] [--json]``, locally and against a server (``fetch`` differs):
    print the job, and with ``watch`` again every second until it ends."""
    while True:
        view = fetch()
        if as_json:
            emit_json(view)
        else:
            print_job(view)
        if not watch or view["state"] not in ("running", "queued"):
            return
        time.sleep(WATCH_S)


def jobs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List jobs, newest first."""
    with open_vault(ctx) as vault:
        rows = list_jobs(vault)
        data = [job_dict(vault, j) for j in rows]
    if as_json:
        emit_json(data)
        return
    for d in data:
        out.print(job_row(d), highlight=False, markup=False)


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
        show(lambda: job_dict(vault, get_job(vault, what)), as_json=as_json, watch=watch)


def resume(ctx: typer.Context, job_id: str) -> None:
    with open_vault(ctx) as vault:
        j = dispatch.execute(vault, get_job(vault, job_id).id, ConsoleObserver())
        print_job(job_dict(vault, j))
        if j.state != "succeeded":
            raise typer.Exit(1)


def cancel(ctx: typer.Context, job_id: str) -> None:
    with open_vault(ctx) as vault:
        j = cancel_job(vault, job_id)
    out.print(f"job {j.id} cancelled")
