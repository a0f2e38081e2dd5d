"""Source kind ``hyperv``: a VM on a live Hyper-V host, reached through PowerShell remoting.

Written to the documented API, untested against a real host. No Windows host was available
where this was written: the scripts (``rehost.sources.hyperv_ps``) follow Microsoft's
documentation of the Hyper-V cmdlets, the Hyper-V WMI v2 classes and the VMM cmdlets, and the
tests run them against a fake runner that returns JSON shaped on that documentation. What
is tested for real elsewhere is the reading of what Hyper-V writes (export folders,
checkpoint chains, UEFI boot: ``rehost.sources.image_hyperv``, ``rehost.disks.vhdx_chain``).

``rehost source add hyperv NAME --host H --user U [--vmm SERVER] [--vm VM]`` logs in over
WinRM with ``pypsrp`` (an optional dependency: ``pip install pypsrp``), password from
``$REHOST_HYPERV_PASSWORD`` or a prompt, never stored, never logged. It finds the VM (by name
with ``-eq``: no wildcards) and registers its generation (2: UEFI), CPUs, startup memory,
disks (Get-VHD's size and path) and NICs (MAC; network: the virtual switch, or with
``--vmm`` the VMM VM network, which the machine's network map then translates).

A cycle (``HypervSource.snapshot``), Resilient Change Tracking as Microsoft's "Hyper-V
backup approaches" describes it: take a recovery snapshot; ask GetVirtualDiskChanges for the
ranges changed since the parent point's RCT ids; have the host export the snapshot to an SMB
share (``--share``) that the rehost server has mounted (``--share-mount``) and read the
exported VHDX there with rehost's own readers, only the changed ranges; turn the snapshot
into a reference point, whose RCT ids go into the recovery point for the next cycle; once the
point is stored, drop the parent's reference point. The export copies every disk in full on
the host's side each cycle (RCT saves what rehost reads and stores, not the export's own
I/O). Without ``--share`` a cycle stops with an error that says so: there is no other
documented way to read a Hyper-V disk's bytes remotely.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from rehost.disks.extent import Extent
from rehost.errors import UsageError
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources import credentials, registry
from rehost.sources import hyperv_ps as ps
from rehost.sources.base import Snapshot
from rehost.sources.hyperv_ps import HypervError
from rehost.spec import MachineSpec

#: where the password comes from (never stored, never logged)
PASSWORD_ENV = "REHOST_HYPERV_PASSWORD"
UNTESTED = "written to the documented API, untested against a real host"
PIP_HINT = "pip install pypsrp"


class PsRunner(Protocol):
    """Runs one PowerShell script on a host and returns what it printed (JSON); a script
    that fails raises ``HypervError``. The real one is ``PypsrpRunner``; tests give a fake."""

    def run(self, script: str) -> str: ...


class PypsrpRunner:
    """PowerShell remoting (WinRM) through ``pypsrp.client.Client`` with Negotiate auth.

    The password goes to the client and is not kept here: ``repr`` and error messages name
    the host and user only.
    """

    def __init__(self, host: str, user: str, password: str, *, ssl: bool = True) -> None:
        client = _pypsrp_client()
        self.host, self.user = host, user
        self._client = client.Client(host, username=user, password=password, ssl=ssl, auth="negotiate")

    def __repr__(self) -> str:
        return f"PypsrpRunner(host={self.host!r}, user={self.user!r})"

    def run(self, script: str) -> str:
        output, streams, had_errors = self._client.execute_ps(script)
        if had_errors:
            errors = "; ".join(str(e) for e in getattr(streams, "error", [])) or "no error record"
            raise HypervError(f"PowerShell on {self.host} failed: {errors}")
        return str(output)


def _pypsrp_client() -> Any:
    """``pypsrp.client``, imported when a host is reached (an optional dependency)."""
    try:
        return importlib.import_module("pypsrp.client")
    except ImportError:
        raise UsageError(f"the hyperv source needs the pypsrp package (PowerShell remoting): {PIP_HINT}") \
            from None


#: rehost's image format of each file an export holds (an .avhdx is a chain rehost serves itself)
_FORMATS = {".vhdx": "vhdx", ".avhdx": "avhdx", ".vhd": "vpc"}

#: how a runner is made from (host, user, use TLS); tests replace it with a fake
Connect = Callable[[str, str, bool], PsRunner]


def connect(host: str, user: str, ssl: bool) -> PsRunner:
    return PypsrpRunner(host, user, credentials.password(PASSWORD_ENV, user, host), ssl=ssl)


@dataclass(frozen=True)
class HypervConfig:
    """A VM on a Hyper-V host, reached through PowerShell remoting (one machine per source)."""

    host: str = field(metadata={"help": "The Hyper-V host's name (WinRM: HTTPS port 5986 unless --http)."})
    user: str = field(metadata={
        "help": "The Windows user (DOMAIN\\user); the password comes from $REHOST_HYPERV_PASSWORD or a "
                "prompt, and is never stored."})
    vm: str | None = field(default=None, metadata={
        "help": "The VM's name on the host (default: the machine's name); compared exactly, no wildcards."})
    vmm: str | None = field(default=None, metadata={
        "help": "A System Center VMM server: each NIC's network is then its VMM VM network (for the "
                "network map), asked of that server with the same user."})
    share: str | None = field(default=None, metadata={
        "help": "A UNC folder (\\\\server\\share\\rehost) the host exports each cycle's recovery snapshot "
                "to; the host's computer account must be able to write there."})
    share_mount: Path | None = field(default=None, metadata={
        "help": "Where --share is mounted on the rehost server (read there with rehost's VHDX reader).",
        "host_path": True})
    network_map: tuple[str, ...] = field(default=(), metadata={
        "help": "VMNETWORK=TARGETNET (repeat it): where a failover attaches each VM network. With "
                "--vmm (or this option) the source keeps its own map, and a failover is refused while a "
                "network of the VM is not in it (rehost source verify / map-networks)."})
    http: bool = field(default=False, metadata={
        "help": "WinRM over HTTP (port 5985) instead of HTTPS; Negotiate still encrypts the messages."})
    force_shutdown: bool = field(default=False, metadata={
        "help": "At failover, Stop-VM -Force: shut down even with applications holding unsaved data."})

    def __post_init__(self) -> None:
        if not self.host.strip() or not self.user.strip():
            raise UsageError("give the Hyper-V host and user (--host H --user U)")
        if (self.share is None) != (self.share_mount is None):
            raise UsageError("give --share and --share-mount together (the host writes the share, "
                             "rehost reads its mount)")
        if self.vmm is not None and not self.vmm.strip():
            raise UsageError("--vmm: give the VMM server's name")
        for pair in self.network_map:
            vm_net, sep, target_net = pair.partition("=")
            if not sep or not vm_net.strip() or not target_net.strip():
                raise UsageError(f"--network-map takes VMNETWORK=TARGETNET, not {pair!r}")

    def networks(self) -> dict[str, str] | None:
        """The source's own network map, or None when it keeps none (no --vmm, no --network-map)."""
        if not self.vmm and not self.network_map:
            return None
        return dict(pair.partition("=")[::2] for pair in self.network_map)


def discover(name: str, config: HypervConfig) -> MachineSpec:
    """The VM as the host (and VMM) state it, through the real remoting client."""
    runner = connect(config.host, config.user, not config.http)
    vmm = connect(config.vmm, config.user, not config.http) if config.vmm else None
    return discover_with(name, config, runner, vmm)


def discover_with(name: str, config: HypervConfig, runner: PsRunner, vmm: PsRunner | None) -> MachineSpec:
    """``discover`` with the runners given: the host's, and VMM's when ``--vmm`` is set."""
    wanted = config.vm or name
    found = ps.parse_inventory(runner.run(ps.inventory_script(wanted)))
    if len(found) != 1:
        names = sorted(v.name for v in ps.parse_inventory(runner.run(ps.inventory_script())))
        how = "no VM" if not found else f"{len(found)} VMs"
        raise UsageError(f"{how} named {wanted!r} on {config.host} (VMs: {', '.join(names) or 'none'})")
    vm = found[0]
    if not vm.disks:
        raise UsageError(f"VM {vm.name} ({vm.id}) has no disk to replicate")
    networks: dict[str, str] = {}
    if config.vmm and vmm is not None:
        networks = ps.parse_vmm_networks(vmm.run(ps.vmm_networks_script(config.vmm, vm.name)))
    settings: dict[str, Any] = {
        "host": config.host, "user": config.user, "http": config.http, "vm_id": vm.id, "vm_name": vm.name,
        "vmm": config.vmm, "share": config.share,
        "share_mount": str(config.share_mount) if config.share_mount else None,
        "force_shutdown": config.force_shutdown, "generation": vm.generation, "state": vm.state}
    mapped = config.networks()
    if mapped is not None:
        settings["network_map"] = mapped
    return ps.machine_spec(name, vm, settings, networks)


class HypervSource:
    """The provider a cycle and a failover talk to (``SourceProvider``)."""

    kind = "hyperv"

    def __init__(self, settings: Mapping[str, Any], connect_to: Connect = connect) -> None:
        self.settings = dict(settings)
        self._connect = connect_to

    def _runner(self) -> PsRunner:
        return self._connect(str(self.settings["host"]), str(self.settings["user"]),
                             not self.settings.get("http"))

    def _export_place(self, machine: MachineSpec) -> tuple[str, Path]:
        """This cycle's folder on the share, as the host names it and as rehost reads it."""
        share, mount = self.settings.get("share"), self.settings.get("share_mount")
        if not share or not mount:
            raise HypervError(
                f"{machine.name}: reading a Hyper-V VM's disks needs an SMB share the host exports to "
                "and the rehost server has mounted (register the source again with --share and "
                f"--share-mount); not available without it ({UNTESTED})")
        folder = f"rehost-{machine.id[:12] or 'vm'}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        return f"{str(share).rstrip(chr(92))}\\{folder}", Path(str(mount)) / folder

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        remote, local = self._export_place(machine)
        runner = self._runner()
        vm_id = str(self.settings["vm_id"])
        notes: list[str] = []
        taken = runner.run(ps.create_recovery_snapshot_script(vm_id, app_consistent))
        snap = ps.parse_recovery_snapshot(taken)
        with ExitStack() as stack:
            try:
                changed = self._changed(runner, machine, snap, parent, notes)
                runner.run(ps.export_snapshot_script(vm_id, snap.instance_id, remote))
                stack.callback(shutil.rmtree, local, True)
                disks = self._open_exported(stack, machine, local)
                point = ps.parse_reference_point(runner.run(ps.convert_to_reference_point_script(snap.path)))
            except BaseException:
                stack.close()
                runner.run(ps.destroy_snapshot_script(snap.path))  # never leave a recovery snapshot
                raise
            metadata = {"kind": self.kind, "vm": vm_id, "reference_point": point.path,
                        "rct_ids": list(point.rct_ids)}
            previous = str(parent.source.get("reference_point") or "") if parent else ""

            def drop_previous(_: RecoveryPoint) -> None:
                if previous:
                    runner.run(ps.destroy_reference_point_script(previous))

            # ConsistencyLevel 1 asks VSS in the guest; unsure: whether CreateSnapshot fails or
            # falls back to crash-consistent when the guest's VSS cannot (the point says APP)
            yield Snapshot(disks, Consistency.APP if app_consistent else Consistency.CRASH, changed=changed,
                           metadata=metadata, notes=notes, on_commit=drop_previous)

    @staticmethod
    def _changed(runner: PsRunner, machine: MachineSpec, snap: ps.RecoverySnapshot,
                 parent: RecoveryPoint | None, notes: list[str]) -> dict[int, list[Extent] | None]:
        """Per disk, the ranges RCT says changed since the parent point; None (hash-diff) with a
        note where it cannot say."""
        unknown: dict[int, list[Extent] | None] = {d.index: None for d in machine.disks}
        if parent is None:
            return unknown
        ids = [str(i) for i in parent.source.get("rct_ids") or []]
        if len(ids) != len(machine.disks) or len(snap.disks) != len(machine.disks):
            notes.append(f"the parent point has {len(ids)} RCT id(s), the snapshot {len(snap.disks)} "
                         f"disk(s), the machine {len(machine.disks)}: hash-diff this cycle")
            return unknown
        sizes = [d.size for d in machine.disks]
        answers = ps.parse_disk_changes(runner.run(ps.disk_changes_script(snap.disks, ids, sizes)))
        if len(answers) != len(machine.disks):
            raise HypervError(f"GetVirtualDiskChanges answered for {len(answers)} of {len(machine.disks)} "
                              "disks")
        return {d.index: ps.changed_extents(a, d.size) for d, a in zip(machine.disks, answers, strict=True)}

    @staticmethod
    def _open_exported(stack: ExitStack, machine: MachineSpec, local: Path) -> list[tuple[int, ReadableDisk]]:
        """The exported disks, read where the share is mounted (one VM folder inside)."""
        from rehost.disks import DiskImage, open_disk, vhdx_chain
        from rehost.sources.image_hyperv import export_disks

        folders = sorted(p for p in local.iterdir() if p.is_dir()) if local.is_dir() else []
        if len(folders) != 1:
            raise HypervError(f"the host's export is not at {local} (is --share-mount where --share is "
                              "mounted?)")
        files = export_disks(folders[0])
        if len(files) != len(machine.disks):
            raise HypervError(f"the export has {len(files)} disk(s), the machine {len(machine.disks)}")
        out: list[tuple[int, ReadableDisk]] = []
        for spec, path in zip(machine.disks, files, strict=True):  # export_disks: by base name
            fmt = _FORMATS.get(path.suffix.lower(), "vhdx")
            if fmt != "vpc" and vhdx_chain.read_vhdx(path).virtual_size != spec.size:
                raise HypervError(f"exported {path.name} is not the size of disk {spec.index} ({spec.size} "
                                  "bytes): rehost will not guess which disk it is")
            out.append((spec.index, stack.enter_context(open_disk(DiskImage(path, fmt, spec.size)))))
        return out

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        return None

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        """Guest shutdown through Hyper-V's integration services (Stop-VM), ``-Force`` only if
        the source was registered with --force-shutdown; a guest still on after ``timeout``
        seconds is an error (a final sync of a running guest would not be final)."""
        force = bool(self.settings.get("force_shutdown"))
        script = ps.stop_vm_script(str(self.settings["vm_id"]), timeout, force)
        state = ps.parse_state(self._runner().run(script))
        if state != "Off":
            hint = "" if force else "; register the source with --force-shutdown to force it"
            raise HypervError(f"VM {self.settings.get('vm_name')} is still {state} after {timeout:.0f} s"
                              f"{hint}")
        return f"guest {self.settings.get('vm_name')} shut down (Stop-VM{' -Force' if force else ''})"

    def release(self, machine: MachineSpec) -> str | None:
        return None

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        return ("the last RCT reference point is left on the host (remove it with "
                "Msvm_VirtualSystemReferencePointService.DestroyReferencePoint)")


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> HypervSource:
    return HypervSource(settings)


PLUGIN = registry.register(registry.SourcePlugin(
    kind="hyperv",
    summary="A VM on a live Hyper-V host over PowerShell remoting (pypsrp): recovery snapshots + Resilient "
            "Change Tracking, disks exported to an SMB share; optional VMM VM networks. Written to the "
            "documented API, untested against a real host.",
    config=HypervConfig,
    capabilities=registry.Capabilities(change_tracking="hyperv-rct", can_shutdown=True, app_consistent="vss"),
    discover=discover,
    open=_open,
    name_hint="the VM's name on the host unless --vm is given",
))
