"""Source kind ``vsphere``: a VM on vCenter or ESXi, replicated with snapshots and CBT.

``rehost source add vsphere NAME --host H --user U [--vm VM] [--thumbprint SHA1 | --insecure]``
logs in (password from ``$REHOST_VSPHERE_PASSWORD`` or a prompt: never stored), finds the VM
(by moref or name; an unknown one is refused with the whole inventory listed) and registers
it with what vSphere states plainly: CPUs, memory, firmware, guest OS, disks (capacity,
datastore path, controller) and NICs (MAC, port group). The vault keeps host, user, trust and
the VM's moref; each cycle logs in again.

A cycle (``VsphereSource.snapshot``): remove rehost snapshots left behind, turn CBT on if off,
take ``rehost-cycle-...``, ask ``QueryChangedDiskAreas`` against the parent point's changeId
(stored in the point as ``change_ids``), read only those areas of the snapshot's base disk
over ``/folder`` (``rehost.sources.vsphere_http``), remove the snapshot. Whenever CBT cannot
answer, the disk is hash-diffed (every allocated area read, only differences stored) and the
notes say why: exact, only slower.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from rehost.disks.extent import Extent
from rehost.errors import UsageError
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources import registry, vsphere_cbt
from rehost.sources.base import Snapshot
from rehost.sources.vsphere_api import Session, VmInfo, VsphereError, password
from rehost.sources.vsphere_http import DatastoreDisk, normalize_thumbprint
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec

TOOLS_RUNNING = "guestToolsRunning"


@dataclass(frozen=True)
class VsphereConfig:
    """A VM on vCenter or ESXi, reached through the vSphere API (one machine per source)."""

    host: str = field(metadata={"help": "vCenter or ESXi host name, optionally :PORT (default 443)."})
    user: str = field(metadata={
        "help": "The vSphere user (the password comes from $REHOST_VSPHERE_PASSWORD or a prompt, and is "
                "never stored)."})
    vm: str | None = field(default=None, metadata={
        "help": "The VM's moref (vm-42) or name (default: the machine's name). An unknown VM is refused "
                "with the inventory listed."})
    thumbprint: str | None = field(default=None, metadata={
        "help": "The host certificate's SHA-1 (or SHA-256) thumbprint to pin (default: verify with the "
                "system's CAs)."})
    insecure: bool = field(default=False, metadata={
        "help": "Do not verify the host's certificate at all (anyone on the path can read the session)."})

    def __post_init__(self) -> None:
        if not self.host.strip() or not self.user.strip():
            raise UsageError("give the vSphere host and user (--host H --user U)")
        if self.thumbprint is not None and self.insecure:
            raise UsageError("give either --thumbprint or --insecure, not both")
        if self.thumbprint is not None:
            t = normalize_thumbprint(self.thumbprint)
            if len(t) not in (40, 64) or any(c not in "0123456789abcdef" for c in t):
                raise UsageError(f"--thumbprint {self.thumbprint!r}: give the certificate's SHA-1 "
                                 "(or SHA-256) fingerprint in hex")


def _session(settings: Mapping[str, Any]) -> Session:
    host, user = str(settings["host"]), str(settings["user"])
    return Session(host, user, password(user, host), thumbprint=settings.get("thumbprint"),
                   insecure=bool(settings.get("insecure")))


def discover(name: str, config: VsphereConfig) -> MachineSpec:
    """The VM's hardware and disks, as the vSphere inventory states them."""
    if config.insecure:
        import sys

        print(f"WARNING: --insecure: the certificate of {config.host} is not verified; the session "
              "(and the disk data) can be read by anyone on the path", file=sys.stderr)
    settings: dict[str, Any] = {"host": config.host, "user": config.user, "insecure": config.insecure}
    if config.thumbprint:
        settings["thumbprint"] = normalize_thumbprint(config.thumbprint)
    with _session(settings) as s:
        vm = s.find(config.vm or name)
    if not vm.disks:
        raise UsageError(f"VM {vm.name} ({vm.moref}) has no disk to replicate")
    settings.update(moref=vm.moref, vm_name=vm.name, datacenter=vm.datacenter,
                    device_keys=[d.key for d in vm.disks], power_state=vm.power_state, tools=vm.tools,
                    cbt=vm.cbt)
    return MachineSpec(
        name=name or vm.name, settings=settings,
        disks=tuple(DiskSpec(index=i, size=d.capacity, ref=d.file_name, format="vsphere",
                             controller=d.controller) for i, d in enumerate(vm.disks)),
        firmware=Firmware.UEFI if vm.firmware == "efi" else Firmware.BIOS,
        cpus=vm.cpus, memory_mib=vm.memory_mib or MachineSpec(name="").memory_mib,
        nics=tuple(NicSpec(mac=mac, network=net) for mac, net in vm.nics), guest_os=vm.guest_os)


class VsphereSource:
    """The provider a cycle and a failover talk to (``SourceProvider``)."""

    kind = "vsphere"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.moref = str(settings.get("moref", ""))  # checked when a cycle looks the VM up

    def _vm(self, s: Session) -> VmInfo:
        vm = s.vm(self.moref, str(self.settings.get("datacenter", "")))
        if vm is None:
            raise VsphereError(f"VM {self.moref} ({self.settings.get('vm_name')}) is no longer on "
                               f"{self.settings['host']}")
        return vm

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        notes: list[str] = []
        with ExitStack() as stack:
            s = stack.enter_context(_session(self.settings))
            vm = self._vm(s)
            removed = vsphere_cbt.remove_leftovers(s, vm)
            if removed:
                notes.append(f"removed {len(removed)} snapshot(s) an interrupted cycle left: "
                             f"{', '.join(removed)}")
            turned_on = vsphere_cbt.ensure_cbt(s, vm)
            if turned_on:
                notes.append("changed-block tracking was off on the VM: turned it on; this cycle reads every "
                             "allocated area (hash-diff), the next ones only what changed")
            quiesce = app_consistent and vm.tools == TOOLS_RUNNING
            if app_consistent and not quiesce:
                notes.append(f"VMware Tools are not running ({vm.tools}): crash-consistent snapshot, "
                             "not quiesced")
            name = vsphere_cbt.snapshot_name(machine.id)
            snap = vsphere_cbt.take(s, vm, name, quiesce)
            stack.callback(vsphere_cbt.remove, s, snap, name)  # also when the cycle fails
            yield self._open_disks(stack, s, vm, snap, name, machine, parent, turned_on, notes,
                                   Consistency.APP if quiesce else Consistency.CRASH)

    def _open_disks(self, stack: ExitStack, s: Session, vm: VmInfo, snap: Any, name: str,
                    machine: MachineSpec, parent: RecoveryPoint | None, turned_on: bool, notes: list[str],
                    consistency: Consistency) -> Snapshot:
        frozen = {d.key: d for d in vsphere_cbt.snapshot_disks(s, snap, vm)}
        keys = list(self.settings.get("device_keys") or [])
        previous: dict[str, str] = dict((parent.source.get("change_ids") or {}) if parent else {})
        disks: list[tuple[int, ReadableDisk]] = []
        changed: dict[int, list[Extent] | None] = {}
        change_ids: dict[str, str] = {}
        for spec in machine.disks:
            key = keys[spec.index] if spec.index < len(keys) else None
            disk = frozen.get(key) if key is not None else None
            if disk is None:
                raise VsphereError(f"disk {spec.index} of {machine.name} ({spec.ref}) is no longer on "
                                   f"VM {vm.name}")
            if disk.has_parent:
                raise VsphereError(f"disk {spec.index} of {vm.name} ({disk.file_name}) is a delta disk "
                                   "(the VM has other snapshots): rehost reads flat base disks only; "
                                   "consolidate first")
            if disk.capacity != spec.size:
                notes.append(f"disk {spec.index} is now {disk.capacity} bytes (was {spec.size}): hash-diff")
            allocated = vsphere_cbt.changed_areas(s, vm, snap, disk, "*") if disk.change_id else None
            if isinstance(allocated, vsphere_cbt.Refused):
                notes.append(f"disk {spec.index}: allocated areas unknown ({allocated.reason}): "
                             "reading all of it")
                allocated = None
            changed[spec.index] = self._changed(s, vm, snap, disk, spec.index, parent, previous, turned_on,
                                                notes)
            if disk.change_id:
                change_ids[str(spec.index)] = disk.change_id
            elif not turned_on:
                notes.append(f"disk {spec.index}: the snapshot has no changeId (CBT not in effect): "
                             "the next cycle hash-diffs too")
            reader = DatastoreDisk(s.endpoint, vm.datacenter, disk.datastore, disk.flat_path, disk.capacity,
                                   allocated)
            stack.callback(reader.close)
            disks.append((spec.index, reader))
        metadata = {"kind": self.kind, "vm": vm.moref, "snapshot": name, "change_ids": change_ids}
        return Snapshot(disks, consistency, changed=changed, metadata=metadata, notes=notes)

    @staticmethod
    def _changed(s: Session, vm: VmInfo, snap: Any, disk: Any, index: int, parent: RecoveryPoint | None,
                 previous: dict[str, str], turned_on: bool, notes: list[str]) -> list[Extent] | None:
        """The areas CBT says changed since the parent point; None (hash-diff) with a note why not."""
        if parent is None or turned_on:
            return None
        before = previous.get(str(index))
        if before is None:
            notes.append(f"disk {index}: the parent point has no changeId: hash-diff")
            return None
        if not disk.change_id:
            return None  # said once above
        areas = vsphere_cbt.changed_areas(s, vm, snap, disk, before)
        if isinstance(areas, vsphere_cbt.Refused):
            notes.append(f"disk {index}: vSphere refused changeId {before} ({areas.reason}; CBT was reset?): "
                         "hash-diff this cycle")
            return None
        return areas

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        return None

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        """Guest shutdown through VMware Tools; power off if Tools refuse or after ``timeout`` s.

        ``ShutdownGuest`` is tried whatever ``toolsRunningStatus`` says (it lags behind the
        guest); a host without Tools in the guest refuses it (``ToolsUnavailable``), and
        then the VM is powered off: its disks are crash-consistent for the final sync.
        """
        import time

        from pyVmomi import vim, vmodl

        with _session(self.settings) as s:
            vm = self._vm(s)
            obj = s.vm_object(vm.moref)
            if vm.power_state != "poweredOn":
                return f"VM {vm.name} was already {vm.power_state}"
            try:
                obj.ShutdownGuest()
            except (vim.fault.VimFault, vmodl.MethodFault) as e:
                how = f"powered off: VMware Tools could not shut the guest down ({type(e).__name__})"
            else:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if s.props(obj, ["runtime.powerState"]).get("runtime.powerState") == "poweredOff":
                        return f"guest {vm.name} shut down through VMware Tools"
                    time.sleep(1)
                how = f"powered off: the guest did not shut down within {timeout:.0f} s"
            s.wait(obj.PowerOffVM_Task(), f"powering off {vm.name}")
            return how

    def release(self, machine: MachineSpec) -> str | None:
        return None

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        return "changed-block tracking left on (other backup tools may rely on it)"


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> VsphereSource:
    return VsphereSource(settings)


PLUGIN = registry.register(registry.SourcePlugin(
    kind="vsphere",
    summary="A VM on vCenter/ESXi: snapshots + changed-block tracking (QueryChangedDiskAreas), disks read "
            "over the datastore's HTTP interface.",
    config=VsphereConfig,
    capabilities=registry.Capabilities(change_tracking="vsphere-cbt", can_shutdown=True,
                                       app_consistent="vmware-tools"),
    discover=discover,
    open=_open,
    name_hint="the VM's name unless --vm is given",
))
