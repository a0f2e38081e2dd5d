"""rehost demo: the whole migration lifecycle on the embedded default, from nothing.

It builds a tiny bootable Linux as the "on-premises" machine, then does what an operator
does: vault, target, source, replicate, change, replicate the delta, test failover and
cleanup, failover with source shutdown, verified boot, complete migration.

``--source KIND`` / ``--target KIND`` pick the kinds from the source and target registries
(default: image files onto this host's QEMU). ``--target azure`` runs the same lifecycle
against test services that stand in for a subscription (``rehost.cli.demo_azure``: Azurite and
rehost's Resource Manager contract fake; not Azure). ``--source physical`` (or ``--physical``): the
machine is a "physical server" instead of disk image files. Its disk is
served by a real ``rehost-agent`` process on 127.0.0.1, which registers with a one-time
passphrase, is replicated over mutual TLS, is shut down through the agent, and has its
certificate revoked at the end. ``--source vsphere``: the machine is a VM on vcsim (govmomi's
vCenter simulator, started here) with the tiny Linux as its flat VMDK, replicated through the
vSphere API with snapshots and CBT answered by rehost's CBT shim (a TEST DOUBLE: vcsim has no
changed-block tracking), shut down through the vSphere API at failover.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from rehost.agent.config import uninstall
from rehost.cli import demo_azure
from rehost.cli.context import err, human, out
from rehost.cli.job_cmd import ConsoleObserver
from rehost.errors import InvalidState, UsageError
from rehost.jobs.runner import run_job
from rehost.process import free_port
from rehost.targets.base import VerifyReport
from rehost.vault import cycles, failover, inventory, targets
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
        if old_target.is_dir():  # a machine an earlier demo left running (--keep)
            from rehost.targets.local import LocalSettings, LocalTarget

            t = LocalTarget(LocalSettings(old_target))
            for vm in old_target.iterdir():
                placement = t.find(vm.name) if vm.is_dir() else None
                if placement is not None:
                    t.remove(placement)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / _STAMP).write_text("made by rehost demo\n")


def demo(
    workdir: Path = typer.Option(Path("rehost-demo"), help="Folder for the demo (recreated each run)."),
    keep: bool = typer.Option(False, "--keep", help="Leave the migrated machine running at the end."),
    physical: bool = typer.Option(
        False, "--physical", help="Same as --source physical: a physical server through rehost-agent."
    ),
    source_kind: str = typer.Option("image", "--source", help=(
        "Source kind: image, physical, or vsphere (a VM on vcsim, started here, with a CBT test "
        "double in front of it: not a real vCenter).")),
    target_kind: str = typer.Option("local", "--target", help=(
        "Target kind: local (this host's QEMU) or azure (Azurite + rehost's Azure Resource Manager "
        "contract fake, both started here: a stand-in for a subscription, NOT Azure).")),
) -> None:
    """Run the demo migration: a tiny Linux machine moved to this host's QEMU (or --target azure)."""
    from rehost.testkit.tinylinux import build_tiny_linux, set_marker

    source_kind = "physical" if physical else source_kind
    _check_kinds(source_kind, target_kind)
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
    modules = demo_azure.GUEST_MODULES if target_kind == "azure" else ()
    step("Build the on-premises machine (tiny Linux, 64 MiB)",
         lambda: build_tiny_linux(source, marker="v1", mode="stay", extra_modules=modules),
         lambda _: "marker v1" + (", IDE and Hyper-V drivers in its initramfs" if modules else ""))
    vault = step("Create the vault", lambda: Vault.init(workdir / "vault"))
    try:
        with _target_services(target_kind, workdir, step, keep) as scenario:
            if source_kind == "physical":
                with _physical_server(vault, scenario, source, step) as name:
                    _lifecycle(vault, scenario, source, step, set_marker, keep, name, registered=True)
                step("Uninstall the agent (its keys and digests)", lambda: uninstall(workdir / "agent"),
                     lambda removed: f"{len(removed)} item(s) removed")
            elif source_kind == "vsphere":
                with _vsphere_vm(vault, scenario, source, step) as (name, flat):
                    _lifecycle(vault, scenario, flat, step, set_marker, keep, name, registered=True)
            else:
                _lifecycle(vault, scenario, source, step, set_marker, keep)
    finally:
        vault.close()
    out.print("\n[bold]rehost demo: summary[/]")
    for title, secs, note in timings:
        out.print(f"  {secs:7.1f}s  {title}" + (f"  [dim]{note}[/]" if note else ""), highlight=False)
    out.print(f"  {sum(t for _, t, _ in timings):7.1f}s  total; everything is in {workdir}", highlight=False)


#: the source kinds the demo has a machine for (the tiny Linux as image files or behind an agent)
DEMO_SOURCES = ("image", "physical", "vsphere")


def _check_kinds(source_kind: str, target_kind: str) -> None:
    """Both kinds come from the registries (an unknown one is refused with the list); the demo
    then needs a scenario for the source and a target that really boots a machine."""
    from rehost.sources import registry as sources
    from rehost.targets import registry as targets_registry

    sources.get(source_kind)
    plugin = targets_registry.get(target_kind)
    if source_kind not in DEMO_SOURCES:
        raise UsageError(f"the demo has no machine for source kind {source_kind} "
                         f"(demo sources: {', '.join(DEMO_SOURCES)})")
    if plugin.test_double:
        raise UsageError(f"target kind {target_kind} is a test double: the demo needs a target "
                         "that boots the machine")
    if target_kind not in DEMO_TARGETS:
        raise UsageError(f"the demo does not know how to set up a {target_kind} target yet "
                         f"(demo targets: {', '.join(DEMO_TARGETS)})")


#: the target kinds the demo can set up (local: a folder; azure: Azurite + the ARM fake)
DEMO_TARGETS = ("local", "azure")


@dataclass
class _Scenario:
    kind: str
    options: dict[str, Any]
    workdir: Path
    azure: demo_azure.AzureDemo | None = None


@contextmanager
def _target_services(kind: str, workdir: Path, step: Any, keep: bool) -> Iterator[_Scenario]:
    if kind != "azure":
        yield _Scenario(kind, {"path": workdir / "target"}, workdir)
        return
    with ExitStack() as stack:
        az = step("Start Azurite and the Azure Resource Manager fake (NOT Azure: test services on this host)",
                  lambda: stack.enter_context(demo_azure.services(workdir, keep)),
                  lambda _: "blob storage: Azurite; Resource Manager: rehost.testkit.azure_arm over HTTPS")
        yield _Scenario(kind, az.options, workdir, az)


def _replicate(vault: Vault, name: str) -> Any:
    return cycles.replicate_job(vault, name)


def _replica_note(r: Any) -> str:
    if not r.replica:
        return ""
    return f"; replica on the target: {human(r.replica.get('bytes_written', 0))} written" \
        if r.replica.get("state") == "succeeded" else f"; replica sync: {r.replica.get('detail')}"


def _lifecycle(vault: Vault, scenario: _Scenario, source: Path, step: Any, set_marker: Any, keep: bool,
               name: str = "web01", registered: bool = False) -> None:
    kind = scenario.kind
    if not registered:  # an image source; a physical server registers through its agent
        step(_target_title(kind), lambda: _target(vault, scenario), _verify_note)
        step("Register the source machine", lambda: inventory.add_image_source(vault, name, [source]))
    step("Initial replication", lambda: _replicate(vault, name),
         lambda r: f"{human(r.stats.stored_bytes)} stored, point {r.point.short_id}{_replica_note(r)}")
    step("Write on the source (marker v1 -> v2)", lambda: set_marker(source, "v2"))
    step("Delta replication", lambda: _replicate(vault, name),
         lambda r: f"read {human(r.bytes_read)}, changed {human(r.changed_bytes)}, "
         f"stored {human(r.stats.stored_bytes)}{_replica_note(r)}")
    _job(step, vault, name, "Test failover (isolated network)", "test-failover", point="latest")
    _job(step, vault, name, "Clean up the test failover", "test-cleanup")
    provider = targets.provider(targets.get_target(vault, kind))
    if scenario.azure is not None:
        az = scenario.azure
        step("Check that the cleanup left no Azure resource",
             lambda: az.leftovers(provider, failover.vm_for_test(name)),
             lambda left: "none left" if not left else f"LEFT BEHIND: {', '.join(left)}")
    _job(step, vault, name, "Failover with source shutdown", "failover", point="latest", shutdown_source=True)
    _job(step, vault, name, "Complete the migration", "complete")
    if scenario.azure is not None:
        az = scenario.azure
        step("Check that the replica disks are gone from the storage account", lambda: az.replica_blobs(name),
             lambda b: "none left" if not b else f"LEFT BEHIND: {', '.join(b)}")
    step("Write the migration report (rehost report)", lambda: _write_report(vault, name, scenario.workdir),
         lambda path: str(path))
    m = inventory.get_machine(vault, name)
    out.print(f"\n{name} is {m.state}: it runs on target {m.placement.get('target_name')} "
              f"({m.placement.get('dir')}), console log {m.placement.get('console')}", highlight=False)
    if not keep:
        placement = provider.find(name)
        if placement is not None:
            step("Stop the migrated machine (demo only; --keep leaves it running)",
                 lambda: provider.stop(placement))


def _write_report(vault: Vault, name: str, workdir: Path) -> Path:
    """What a migration hands over: the printable report, and its text twin."""
    from rehost.cli.report_cmd import markdown
    from rehost.portal.report import render
    from rehost.vault import report

    data = report.machine_report(vault, name)
    (workdir / f"report-{name}.md").write_text(markdown(data))
    path = workdir / f"report-{name}.html"
    path.write_text(render(data))
    return path


@contextmanager
def _physical_server(vault: Vault, scenario: _Scenario, disk: Path, step: Any) -> Iterator[str]:
    """A physical server stand-in: ``disk`` served by a real ``rehost-agent`` on 127.0.0.1,
    registered the way an operator does it (one-time passphrase, pinned fingerprint)."""
    from rehost.agent.register import register
    from rehost.vault import agents

    name, state = "app01", scenario.workdir / "agent"
    step(_target_title(scenario.kind), lambda: _target(vault, scenario), _verify_note)
    invitation = step("Register the physical server (one-time passphrase)",
                      lambda: agents.add_physical_source(vault, name), lambda _: "expires in 60 min")
    enrollment = agents.start_enrollment(vault, "127.0.0.1", free_port(), log=lambda _m: None)
    agent: subprocess.Popen[bytes] | None = None
    try:
        step("On the server: rehost-agent register (mutual TLS from here on)",
             lambda: register(state, enrollment.url, invitation.passphrase, invitation.fingerprint,
                              [str(disk)], listen="127.0.0.1", port=free_port(), nbd_port=free_port(),
                              shutdown_command=["touch", str(state / "powered-off")]),
             lambda c: f"enrolled as {c.machine}; its 'shutdown' command only touches a file")
        agent = step("On the server: rehost-agent run", lambda: _start_agent(vault, state, name),
                     lambda p: f"pid {p.pid}")
        yield name
        revoked = agents.authority(vault).machine(name) is None
        step("Agent certificate revoked at completion", lambda: None,
             lambda _: "yes" if revoked else "NO: still enrolled")
    finally:
        enrollment.stop()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(30)


@contextmanager
def _vsphere_vm(vault: Vault, scenario: _Scenario, disk: Path, step: Any) -> Iterator[tuple[str, Path]]:
    """A VM on vcsim whose disk is ``disk`` (as a flat VMDK in the simulator's datastore),
    registered with ``source add vsphere`` through the CBT shim (a test double), pinned by
    the shim's certificate thumbprint. Yields the machine's name and the flat file (what the
    "write on the source" step changes)."""
    import os

    from rehost.sources.vsphere_api import PASSWORD_ENV
    from rehost.testkit.vcsim import Vcsim
    from rehost.testkit.vcsim.cbt_shim import CbtShim
    from rehost.testkit.vcsim.vm import create_vm

    name = "vm01"
    step(_target_title(scenario.kind), lambda: _target(vault, scenario), _verify_note)
    with ExitStack() as stack:
        vc = step("Start vcsim (govmomi's vCenter simulator) and the CBT shim (a TEST DOUBLE for CBT)",
                  lambda: stack.enter_context(Vcsim()),
                  lambda v: f"simulator at {v.url}; builds once from Debian's Go sources")
        shim = stack.enter_context(CbtShim(vc))
        placed = step("Create the VM on vcsim (the tiny Linux as its flat VMDK)",
                      lambda: create_vm(vc, disk, name),
                      lambda p: f"{p.moref}, {p.file_name}")
        shim.track(placed.moref, placed.device_key, placed.file_name, placed.flat)
        old = os.environ.get(PASSWORD_ENV)
        os.environ[PASSWORD_ENV] = "vcsim-accepts-any-password"
        try:
            step("Register the VM (rehost source add vsphere, certificate pinned)",
                 lambda: inventory.add_source(vault, "vsphere", name, {
                     "host": shim.host, "user": "demo@vsphere.local", "vm": placed.moref,
                     "thumbprint": shim.thumbprint}),
                 lambda r: f"{r.machine.name}: {len(r.machine.disks)} disk(s)")
            yield name, placed.flat
        finally:
            if old is None:
                os.environ.pop(PASSWORD_ENV, None)
            else:
                os.environ[PASSWORD_ENV] = old


def _start_agent(vault: Vault, state: Path, name: str) -> subprocess.Popen[bytes]:
    from rehost.agent.client import AgentClient, AgentError
    from rehost.vault import agents

    proc = subprocess.Popen([sys.executable, "-m", "rehost.agent", "--state", str(state), "run"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entry = agents.authority(vault).machine(name) or {}
    port = int(((entry.get("inventory") or {}).get("agent") or {}).get("port") or 0)
    client = AgentClient(agents.authority(vault), name, "127.0.0.1", port, timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.heartbeat()
            return proc
        except AgentError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise InvalidState("the agent did not start") from None
            time.sleep(0.2)


def _target_title(kind: str) -> str:
    return "Add and verify the local QEMU target" if kind == "local" else f"Add and verify the {kind} target"


def _target(vault: Vault, scenario: _Scenario) -> VerifyReport:
    """The target is named after its kind (local: its folder is ``<workdir>/target``)."""
    kind = scenario.kind
    targets.add_target(vault, kind, kind, scenario.options)
    report = targets.verify_target(vault, kind)
    if not report.ok:
        raise InvalidState(f"the {kind} target failed verification: {report.failures()}")
    return report


def _verify_note(report: VerifyReport) -> str:
    return f"{len(report.checks)} checks passed: " + ", ".join(c.name for c in report.checks)


def _job(step: Any, vault: Vault, name: str, title: str, kind: str, **params: Any) -> None:
    def run() -> Any:
        job = failover.start_job(vault, kind, name, **params)
        job = run_job(vault, job.id, ConsoleObserver())
        if job.state != "succeeded":
            raise InvalidState(f"{kind} failed: {job.error}")
        return job

    step(title, run, lambda j: j.outputs.get("boot_line", "") or f"job {j.id}")
