"""rehost demo: the whole migration lifecycle on the embedded default, from nothing.

It builds a tiny bootable Linux as the "on-premises" machine, then does what an operator
does: vault, target, source, replicate, change, replicate the delta, test failover and
cleanup, failover with source shutdown, verified boot, complete migration.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from rehost.cli.context import err, human, out
from rehost.cli.job_cmd import ConsoleObserver
from rehost.errors import InvalidState, UsageError
from rehost.jobs.runner import run_job
from rehost.vault import failover, inventory, protection, targets
from rehost.vault.vault import Vault

_STAMP = ".rehost-demo"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def _prepare(workdir: Path) -> None:
    """Start from a clean folder; only ever delete a folder an earlier demo made."""
    if workdir.exists():
        if not (workdir / _STAMP).exists():
            raise UsageError(f"{workdir} exists and was not made by rehost demo; choose --workdir")
        old_target = workdir / "target"
        if old_target.is_dir():
            from rehost.targets.local import LocalSettings, LocalTarget

            t = LocalTarget(LocalSettings(old_target))
            for vm in old_target.iterdir():
                t.remove(vm.name)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / _STAMP).write_text("made by rehost demo\n")


def demo(
    workdir: Path = typer.Option(Path("rehost-demo"), help="Folder for the demo (recreated each run)."),
    keep: bool = typer.Option(False, "--keep", help="Leave the migrated machine running at the end."),
) -> None:
    """Run the demo migration: a tiny Linux machine moved to this host's QEMU."""
    from rehost.testkit.tinylinux import build_tiny_linux, set_marker

    workdir = workdir.absolute()
    timings: list[tuple[str, float, str]] = []

    def step(title: str, fn: Callable[[], Any], note: Callable[[Any], str] = lambda _: "") -> Any:
        err.print(f"[bold]▶ {title}[/]")
        t0 = time.monotonic()
        result = fn()
        timings.append((title, time.monotonic() - t0, note(result)))
        return result

    _prepare(workdir)
    source = workdir / "onprem-web01.img"
    step("Build the on-premises machine (tiny Linux, 64 MiB)",
         lambda: build_tiny_linux(source, marker="v1", mode="stay"), lambda _: "marker v1")
    vault = step("Create the vault", lambda: Vault.init(workdir / "vault"))
    try:
        _lifecycle(vault, workdir, source, step, set_marker, keep)
    finally:
        vault.close()
    out.print("\n[bold]rehost demo: summary[/]")
    for title, secs, note in timings:
        out.print(f"  {secs:7.1f}s  {title}" + (f"  [dim]{note}[/]" if note else ""), highlight=False)
    out.print(f"  {sum(t for _, t, _ in timings):7.1f}s  total; everything is in {workdir}", highlight=False)


def _lifecycle(vault: Vault, workdir: Path, source: Path, step: Any, set_marker: Any, keep: bool) -> None:
    step("Add and verify the local QEMU target", lambda: _target(vault, workdir / "target"))
    step("Register the source machine", lambda: inventory.add_image_source(vault, "web01", [source]))
    r = step("Initial replication", lambda: protection.replicate(vault, "web01"),
             lambda r: f"{human(r.stats.stored_bytes)} stored, point {r.point.short_id}")
    step("Write on the source (marker v1 -> v2)", lambda: set_marker(source, "v2"))
    step("Delta replication", lambda: protection.replicate(vault, "web01"),
         lambda r: f"read {human(r.bytes_read)}, changed {human(r.changed_bytes)}, "
         f"stored {human(r.stats.stored_bytes)}")
    _job(step, vault, "Test failover (isolated network)", "test-failover", point="latest")
    _job(step, vault, "Clean up the test failover", "test-cleanup")
    _job(step, vault, "Failover with source shutdown", "failover", point="latest", shutdown_source=True)
    _job(step, vault, "Complete the migration", "complete")
    m = inventory.get_machine(vault, "web01")
    out.print(f"\nweb01 is {m.state}: it runs on target {m.placement.get('target_name')} "
              f"({m.placement.get('dir')}), console log {m.placement.get('console')}", highlight=False)
    if not keep:
        t = targets.provider(targets.get_target(vault, "local"))
        step("Stop the migrated machine (demo only; --keep leaves it running)", lambda: t.stop("web01"))
    _ = r


def _target(vault: Vault, path: Path) -> None:
    targets.add_local_target(vault, "local", path)
    report = targets.verify_target(vault, "local")
    if not report.ok:
        raise InvalidState(f"the local target failed verification: {report.failures()}")


def _job(step: Any, vault: Vault, title: str, kind: str, **params: Any) -> None:
    def run() -> Any:
        job = failover.start_job(vault, kind, "web01", **params)
        job = run_job(vault, job.id, ConsoleObserver())
        if job.state != "succeeded":
            raise InvalidState(f"{kind} failed: {job.error}")
        return job

    step(title, run, lambda j: j.outputs.get("boot_line", "") or f"job {j.id}")
