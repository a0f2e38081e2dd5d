"""rehost failover [--test | --cleanup] | complete | serve-point (internal)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import typer

from rehost.cli.context import emit_json, err, open_vault, out
from rehost.cli.job_cmd import ConsoleObserver, job_dict
from rehost.errors import UsageError
from rehost.guest.fixups import FIXUPS, parse_fixups
from rehost.jobs import dispatch
from rehost.vault import failover as fo
from rehost.vault.protection import find_point

FIXUP_HELP = ("Change the copy on the target, never the source or the point: "
              + "; ".join(f"{name}: {what}" for name, what in FIXUPS.items())
              + ". Repeat, or comma-separate, or all.")


def register(app: typer.Typer) -> None:
    app.command("failover")(failover)
    app.command("complete")(complete)
    app.command("serve-point", hidden=True)(serve_point)


def failover(
    ctx: typer.Context,
    name: str,
    test: bool = typer.Option(False, "--test", help="Boot a throw-away copy on the isolated network."),
    cleanup: bool = typer.Option(False, "--cleanup", help="Remove the test machine."),
    point: str = typer.Option("latest", help="latest, latest-processed, latest-app-consistent or an id."),
    shutdown_source: bool = typer.Option(False, "--shutdown-source",
                                         help="Shut the source down first (failover goes on if that fails)."),
    target: str = typer.Option(None, help="Target name (default: the machine's, or the only one)."),
    boot_marker: str = typer.Option(fo.DEFAULT_BOOT_MARKER, help="Regex the console must show."),
    boot_timeout: float = typer.Option(fo.DEFAULT_BOOT_TIMEOUT_S, help="Seconds to wait for it."),
    force_readiness: bool = typer.Option(
        False, "--force-readiness", help="Go on although a readiness requirement fails (see rehost "
        "readiness NAME; needs --reason; both are recorded in the job)."),
    reason: str = typer.Option(None, "--reason", help="Why, with --force-readiness."),
    fix_up: list[str] = typer.Option(
        [], "--fix-up", help=FIXUP_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fail a machine over to its target (or test it with --test, then --cleanup).

    The first step checks the point's readiness for the target (rehost readiness): a failing
    requirement stops the failover before anything is made, unless --force-readiness, or
    unless a --fix-up asked for repairs it on the copy (checked again after it ran)."""
    if test and cleanup:
        raise UsageError("--test and --cleanup are separate steps: run --test first, --cleanup later")
    if reason is not None and not force_readiness:
        raise UsageError("--reason goes with --force-readiness")
    if force_readiness and cleanup:
        raise UsageError("--force-readiness goes with a (test) failover, not --cleanup")
    fixups = parse_fixups(fix_up)
    if fixups and cleanup:
        raise UsageError("--fix-up goes with a (test) failover, not --cleanup")
    with open_vault(ctx) as vault:
        if cleanup:
            job = fo.start_job(vault, "test-cleanup", name)
        else:
            kind = "test-failover" if test else "failover"
            params = {"point": point, "target": target, "boot_marker": boot_marker,
                      "boot_timeout": boot_timeout, "shutdown_source": shutdown_source,
                      "fixups": list(fixups)}
            if force_readiness:
                params["readiness_force_reason"] = reason or ""
            job = fo.start_job(vault, kind, name, **params)
        if not as_json:
            err.print(f"job {job.id}: {job.kind} of {name}", highlight=False)
        job = dispatch.execute(vault, job.id, None if as_json else ConsoleObserver(), _queued(as_json))
        if as_json:
            emit_json(job_dict(vault, job))
        elif job.state == "succeeded":
            boot = job.outputs.get("boot_line")
            out.print(f"{job.kind} of {name} succeeded" + (f": {boot}" if boot else ""), highlight=False)
        if job.state != "succeeded":
            if not as_json:
                err.print(f"rehost: error: {job.kind} of {name} failed: {job.error.splitlines()[0]}; "
                          f"see rehost job {job.id}", markup=False)
            raise typer.Exit(1)


def complete(
    ctx: typer.Context, name: str,
    force: bool = typer.Option(False, "--force", help="Complete although the last failover's verdict "
                               "did not pass (needs --reason; both are recorded in the job)."),
    reason: str = typer.Option(None, "--reason", help="Why, with --force."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Finish a migration: stop replication, purge replica data, keep the migrated machine.

    Refused unless the last failover's verdict passed (it booted and every check of
    `rehost probe add` answered)."""
    if reason is not None and not force:
        raise UsageError("--reason goes with --force")
    with open_vault(ctx) as vault:
        params = {"force_reason": reason or ""} if force else {}
        job = fo.start_job(vault, "complete", name, **params)
        job = dispatch.execute(vault, job.id, None if as_json else ConsoleObserver(), _queued(as_json))
        if as_json:
            emit_json(job_dict(vault, job))
        elif job.state == "succeeded":
            out.print(f"migration of {name} complete")
        if job.state != "succeeded":
            raise typer.Exit(1)


def serve_point(
    ctx: typer.Context, name: str, point: str = typer.Option(...), disk: int = typer.Option(0),
    socket: Path = typer.Option(...),
) -> None:
    """Serve one disk of a recovery point over NBD until stopped (started by failover)."""
    from rehost.disks.nbd_serve import NbdExportServer
    from rehost.jobs import leases
    from rehost.repository.point_reader import PointReader

    with open_vault(ctx) as vault:
        p = find_point(vault, name, point)
        with leases.reading(vault, [p.id], "serve-point"):  # prune keeps the point and its packs
            reader = PointReader(vault.repo, p, disk)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
            with NbdExportServer(reader, socket):
                while not stop.wait(0.5):
                    pass


def _queued(as_json: bool) -> Callable[[str], None] | None:
    """What the CLI says when a worker, not this process, runs the job."""
    if as_json:
        return None
    return lambda queue: err.print(f"sent to the workers (queue {queue}); following it here", highlight=False)
