"""PowerShell for a live Hyper-V host: the scripts rehost sends, and parsers of what they print.

Written to the documented API, untested against a real host: no Windows host was available
where this was written, and every cmdlet, WMI class, method and property used here was taken
from Microsoft's documentation (each one names its page) and from memory of it; where the
memory is unsure a comment says so. The tests check the text of the scripts and parse JSON
samples shaped on the documented output, not recordings of a real host.

Every builder is a pure function that returns script text; every value that comes from a
user or from a host is put in the script as a PowerShell single-quoted string (``quote``),
never pasted into code: a VM named ``x'; Remove-Item C:\\ -Recurse #`` stays a name. Names are
compared with ``-eq`` (``Where-Object``), never passed to ``-Name`` parameters, which treat
``*`` and ``[`` as wildcards. Every script ends in ``ConvertTo-Json -Depth 4 -Compress`` of an
array (``-InputObject @(...)``: one element stays a list), and each parser refuses output
that does not have the documented shape with a ``HypervError`` that says what was missing.

The Resilient Change Tracking (RCT) cycle follows Microsoft's "Hyper-V backup approaches"
(learn.microsoft.com/virtualization/hyper-v-on-windows/reference/hypervbackupapproaches):
take a *recovery* snapshot (``Msvm_VirtualSystemSnapshotService.CreateSnapshot``,
SnapshotType 32768), ask ``Msvm_ImageManagementService.GetVirtualDiskChanges`` which byte
ranges of each disk changed since the previous reference point's RCT id, copy the data, then
turn the snapshot into a reference point (``ConvertToReferencePoint``), whose RCT ids the
next cycle asks against. The WMI scripts use Windows PowerShell 5.1's ``[wmi]`` accelerators
and ``GetText(2)`` (embedded instances as DTD 2.0 text), as Microsoft's own Hyper-V WMI
samples do; the default remoting endpoint (``Microsoft.PowerShell``) is Windows PowerShell.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rehost.disks.extent import Extent
from rehost.errors import RehostError
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec

#: the WMI namespace of Hyper-V since Windows Server 2012 ("Hyper-V WMI provider (V2)")
NAMESPACE = r"root\virtualization\v2"
#: CreateSnapshot's SnapshotType for a recovery snapshot, the kind backup applications take
#: ("CreateSnapshot method of the Msvm_VirtualSystemSnapshotService class": 2 Full snapshot,
#: 3 Disk snapshot, 32768 Recovery snapshot)
RECOVERY_SNAPSHOT = 32768
#: JSON of every script: ``-Depth 4`` keeps the disks and NICs inside a VM
TO_JSON = "ConvertTo-Json -Depth 4 -Compress"
#: the characters PowerShell takes as a single quote inside a single-quoted string: the ASCII
#: one and the typographic ones (about_Quoting_Rules; the tokenizer's IsSingleQuote)
_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


class HypervError(RehostError):
    """A Hyper-V host (or VMM) refused an operation, or printed something rehost cannot read."""


def quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted string: nothing inside is expanded or run.

    In a single-quoted string the only special character is the quote itself, which is
    written twice (about_Quoting_Rules); PowerShell also ends such a string at the typographic
    quotes ‘ ’ ‚ ‛, so those are doubled too. A NUL cannot be sent in a script at all.
    """
    if "\0" in value:
        raise HypervError(f"{value!r}: a NUL character cannot be passed to PowerShell")
    out = value
    for q in _SINGLE_QUOTES:
        out = out.replace(q, q * 2)
    return f"'{out}'"


def guid(value: str) -> str:
    """A VM or object id as Hyper-V prints it (lower-case GUID), or a HypervError: ids are put
    in scripts only after this check, as a second fence behind ``quote``."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise HypervError(f"{value!r} is not a Hyper-V id (a GUID)") from None


_PRELUDE = "$ErrorActionPreference = 'Stop'\n"


# -- inventory (Hyper-V module cmdlets) -------------------------------------------------------


def inventory_script(vm: str | None = None) -> str:
    """Every VM of the host (or the one named ``vm``) with its disks and network adapters.

    Properties, from the cmdlets' pages (learn.microsoft.com/powershell/module/hyper-v/):
    Get-VM (VirtualMachine: Name, Id, Generation, ProcessorCount, MemoryStartup in bytes,
    State), Get-VMHardDiskDrive (ControllerType, ControllerNumber, ControllerLocation, Path),
    Get-VHD (VirtualHardDisk: Path, VhdFormat, VhdType, Size in bytes, ParentPath) and
    Get-VMNetworkAdapter (Name, MacAddress as 12 hex digits, SwitchName, IPAddresses).
    Enums are printed with ``.ToString()``: ConvertTo-Json would print their numbers.
    """
    select = f" | Where-Object {{ $_.Name -eq {quote(vm)} }}" if vm is not None else ""
    return (
        _PRELUDE
        + f"$vms = @(Get-VM{select})\n"
        + "$out = @($vms | ForEach-Object {\n"
        "  $vm = $_\n"
        "  $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {\n"
        "    $vhd = Get-VHD -Path $_.Path\n"
        "    [pscustomobject]@{ ControllerType = $_.ControllerType.ToString();"
        " ControllerNumber = $_.ControllerNumber; ControllerLocation = $_.ControllerLocation;"
        " Path = $vhd.Path; VhdFormat = $vhd.VhdFormat.ToString(); VhdType = $vhd.VhdType.ToString();"
        " Size = $vhd.Size; ParentPath = $vhd.ParentPath }\n"
        "  })\n"
        "  $nics = @(Get-VMNetworkAdapter -VM $vm | ForEach-Object {\n"
        "    [pscustomobject]@{ Name = $_.Name; MacAddress = $_.MacAddress; SwitchName = $_.SwitchName;"
        " IPAddresses = @($_.IPAddresses) }\n"
        "  })\n"
        "  [pscustomobject]@{ Name = $vm.Name; Id = $vm.Id.ToString(); Generation = $vm.Generation;"
        " ProcessorCount = $vm.ProcessorCount; MemoryStartup = $vm.MemoryStartup;"
        " State = $vm.State.ToString(); Disks = $disks; NetworkAdapters = $nics }\n"
        "})\n"
        + f"{TO_JSON} -InputObject $out\n"
    )


@dataclass(frozen=True)
class HvDisk:
    """One virtual hard disk drive of a VM as Get-VMHardDiskDrive and Get-VHD state it."""

    path: str
    size: int
    vhd_format: str
    vhd_type: str
    controller: str
    parent_path: str | None = None


@dataclass(frozen=True)
class HvNic:
    mac: str
    switch: str | None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class HvVm:
    """One VM of the inventory: what discovery turns into a ``MachineSpec``."""

    name: str
    id: str
    generation: int
    cpus: int
    memory_bytes: int
    state: str
    disks: tuple[HvDisk, ...]
    nics: tuple[HvNic, ...]


def _load_list(text: str, what: str) -> list[dict[str, Any]]:
    """The JSON array a script printed (an object alone or nothing is taken as a list too)."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as e:
        raise HypervError(f"{what}: the host printed something that is not JSON ({e})") from None
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(i, dict) for i in items):
        raise HypervError(f"{what}: expected a list of objects, got {type(data).__name__}")
    return items


def _field(obj: dict[str, Any], name: str, kind: type[Any], what: str) -> Any:
    value = obj.get(name)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise HypervError(f"{what}: {name} missing or not a {kind.__name__} ({value!r})")
    return value


def _text_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(str(v) for v in items if v)


def mac_address(raw: str) -> str:
    """``00155D010203`` (Hyper-V) or ``00:15:5D:01:02:03`` (VMM) as ``00:15:5d:01:02:03``."""
    digits = "".join(c for c in raw if c not in ":-").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise HypervError(f"{raw!r} is not a MAC address")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def parse_inventory(text: str) -> list[HvVm]:
    """The VMs ``inventory_script`` printed."""
    vms = []
    for obj in _load_list(text, "Get-VM"):
        name = _field(obj, "Name", str, "Get-VM")
        what = f"VM {name}"
        disks = tuple(
            HvDisk(path=_field(d, "Path", str, what), size=_field(d, "Size", int, what),
                   vhd_format=str(d.get("VhdFormat") or ""), vhd_type=str(d.get("VhdType") or ""),
                   controller=str(d.get("ControllerType") or "").lower(),
                   parent_path=d.get("ParentPath") or None)
            for d in _objects(obj.get("Disks"), what))
        nics = tuple(
            HvNic(mac=mac_address(_field(n, "MacAddress", str, what)), switch=n.get("SwitchName") or None,
                  addresses=_text_list(n.get("IPAddresses")))
            for n in _objects(obj.get("NetworkAdapters"), what))
        vms.append(HvVm(name=name, id=guid(_field(obj, "Id", str, what)),
                        generation=_field(obj, "Generation", int, what),
                        cpus=_field(obj, "ProcessorCount", int, what),
                        memory_bytes=_field(obj, "MemoryStartup", int, what),
                        state=str(obj.get("State") or ""), disks=disks, nics=nics))
    return vms


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    items = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(i, dict) for i in items):
        raise HypervError(f"{what}: expected objects, got {value!r}")
    return items


def firmware(generation: int) -> Firmware:
    """Generation 2 VMs boot UEFI, generation 1 BIOS ("Should I create a generation 1 or 2
    virtual machine in Hyper-V?"); there is no other generation."""
    if generation == 2:
        return Firmware.UEFI
    if generation == 1:
        return Firmware.BIOS
    raise HypervError(f"VM generation {generation}: Hyper-V has generations 1 and 2 only")


def machine_spec(name: str, vm: HvVm, settings: dict[str, Any],
                 networks: dict[str, str] | None = None) -> MachineSpec:
    """``vm`` as rehost's machine. A NIC's network is its virtual switch, or, where
    ``networks`` (MAC -> VMM VM network) names one, that VM network: what the network map of
    the machine then translates into a target network."""
    nets = networks or {}
    return MachineSpec(
        name=name or vm.name, settings=settings,
        disks=tuple(DiskSpec(index=i, size=d.size, ref=d.path, format="hyperv",
                             controller=d.controller or None) for i, d in enumerate(vm.disks)),
        firmware=firmware(vm.generation), cpus=max(1, vm.cpus),
        memory_mib=max(1, vm.memory_bytes // (1024 * 1024)),
        nics=tuple(NicSpec(mac=n.mac, network=nets.get(n.mac) or n.switch or "default", addresses=n.addresses)
                   for n in vm.nics))


# -- VMM (System Center Virtual Machine Manager) -----------------------------------------------


def vmm_networks_script(server: str, vm: str) -> str:
    """The VM network of each network adapter of ``vm``, as VMM knows it (run on the VMM
    server, or anywhere its console's VirtualMachineManager module is installed).

    From the VMM cmdlet pages (learn.microsoft.com/powershell/module/virtualmachinemanager/):
    Get-SCVirtualMachine -VMMServer, Get-SCVirtualNetworkAdapter -VM (MACAddress, VMNetwork,
    whose Name is the VM network's name; VirtualNetwork is the host's switch). Unsure: the
    module name and that an unconnected adapter has a null VMNetwork.
    """
    return (
        _PRELUDE
        + "Import-Module VirtualMachineManager\n"
        + f"$vm = @(Get-SCVirtualMachine -VMMServer {quote(server)}"
        f" | Where-Object {{ $_.Name -eq {quote(vm)} }})\n"
        + "$out = @($vm | ForEach-Object { Get-SCVirtualNetworkAdapter -VM $_ } | ForEach-Object {\n"
        "  [pscustomobject]@{ MACAddress = $_.MACAddress;"
        " VMNetwork = $(if ($_.VMNetwork) { $_.VMNetwork.Name });"
        " VirtualNetwork = $_.VirtualNetwork }\n"
        "})\n"
        + f"{TO_JSON} -InputObject $out\n"
    )


def parse_vmm_networks(text: str) -> dict[str, str]:
    """MAC -> VM network name of what ``vmm_networks_script`` printed (adapters on no VM
    network are left out: they keep their switch's name)."""
    out: dict[str, str] = {}
    for obj in _load_list(text, "Get-SCVirtualNetworkAdapter"):
        mac = _field(obj, "MACAddress", str, "Get-SCVirtualNetworkAdapter")
        network = obj.get("VMNetwork")
        if isinstance(network, str) and network:
            out[mac_address(mac)] = network
    return out


# -- Resilient Change Tracking cycle (WMI, root\virtualization\v2) ----------------------------

#: waits for a WMI job (ReturnValue 4096: "Method parameters checked - job started") and
#: fails unless it ends Completed (JobState 7); "Msvm_ConcreteJob class" documents JobState
#: (3 Starting, 4 Running, 7 Completed) and ErrorDescription
_WAIT_JOB = (
    "function Wait-RehostJob($result, $what) {\n"
    "  if ($result.ReturnValue -eq 4096) {\n"
    "    $job = [wmi]$result.Job\n"
    "    while ($job.JobState -eq 3 -or $job.JobState -eq 4) {"
    " Start-Sleep -Milliseconds 500; $job = [wmi]$result.Job }\n"
    "    if ($job.JobState -ne 7) { throw \"$what failed: $($job.ErrorDescription)\" }\n"
    "    return $job\n"
    "  }\n"
    "  if ($result.ReturnValue -ne 0) { throw \"$what failed: ReturnValue $($result.ReturnValue)\" }\n"
    "}\n"
)


def _vm_by_id(vm_id: str) -> str:
    """``$vm``: the Msvm_ComputerSystem whose Name is the VM's id ("Msvm_ComputerSystem class":
    Name holds the VM's GUID)."""
    return (f"$vm = Get-WmiObject -Namespace {quote(NAMESPACE)} -Class Msvm_ComputerSystem"
            f" | Where-Object {{ $_.Name -eq {quote(guid(vm_id))} }}\n"
            f"if (-not $vm) {{ throw 'VM {guid(vm_id)} is not on this host' }}\n")


#: the class path [wmiclass] takes to make a snapshot's settings (local machine, v2 namespace)
_SETTING_CLASS = "\\\\.\\" + NAMESPACE + ":Msvm_VirtualSystemSnapshotSettingData"


def create_recovery_snapshot_script(vm_id: str, app_consistent: bool) -> str:
    """Take a recovery snapshot of the VM; prints its WMI path and its disks' paths.

    "CreateSnapshot method of the Msvm_VirtualSystemSnapshotService class": CreateSnapshot(
    [in] AffectedSystem, [in] SnapshotSettings (embedded Msvm_VirtualSystemSnapshotSettingData),
    [in] SnapshotType, [in, out] ResultingSnapshot, [out] Job); every [in] parameter is
    passed, by position, ResultingSnapshot as ``$null``. "Msvm_VirtualSystemSnapshotSettingData
    class": ConsistencyLevel 1 application-consistent (VSS in the guest), 2 crash-consistent;
    IgnoreNonSnapshottableDisks. Unsure: that ResultingSnapshot is set when the method ran
    as a job; the fallback takes the job's affected Msvm_VirtualSystemSettingData. The disks
    are the snapshot's Msvm_StorageAllocationSettingData (HostResource: the file's path).
    """
    level = 1 if app_consistent else 2
    return (
        _PRELUDE + _WAIT_JOB + _vm_by_id(vm_id)
        + f"$svc = Get-WmiObject -Namespace {quote(NAMESPACE)} -Class Msvm_VirtualSystemSnapshotService\n"
        + f"$sd = ([wmiclass]{quote(_SETTING_CLASS)}).CreateInstance()\n"
        + f"$sd.ConsistencyLevel = {level}\n"
        "$sd.IgnoreNonSnapshottableDisks = $true\n"
        + f"$r = $svc.CreateSnapshot($vm, $sd.GetText(2), {RECOVERY_SNAPSHOT}, $null)\n"
        "$job = Wait-RehostJob $r 'CreateSnapshot'\n"
        "$snap = if ($r.ResultingSnapshot) { [wmi]$r.ResultingSnapshot } else {"
        " $job.GetRelated('Msvm_VirtualSystemSettingData') | Select-Object -First 1 }\n"
        "$disks = @($snap.GetRelated('Msvm_StorageAllocationSettingData') |"
        " Where-Object { $_.ResourceType -eq 31 } | ForEach-Object { $_.HostResource[0] })\n"
        + f"{TO_JSON} -InputObject @([pscustomobject]@{{ Path = $snap.__PATH; InstanceId = $snap.InstanceID;"
        " Disks = $disks })\n"
    )


@dataclass(frozen=True)
class RecoverySnapshot:
    """A recovery snapshot on the host: its WMI path (what later methods take) and the paths
    of its disks (frozen files GetVirtualDiskChanges reads the change log of)."""

    path: str
    instance_id: str
    disks: tuple[str, ...]


def _only(text: str, what: str, noun: str) -> dict[str, Any]:
    """The one object a script printed (a list of one); anything else is an error."""
    items = _load_list(text, what)
    if len(items) != 1:
        raise HypervError(f"{what}: expected one {noun}, got {len(items)}")
    return items[0]


def parse_recovery_snapshot(text: str) -> RecoverySnapshot:
    obj = _only(text, "CreateSnapshot", "snapshot")
    return RecoverySnapshot(path=_field(obj, "Path", str, "CreateSnapshot"),
                            instance_id=_field(obj, "InstanceId", str, "CreateSnapshot"),
                            disks=_text_list(obj.get("Disks")))


def disk_changes_script(disk_paths: Sequence[str], rct_ids: Sequence[str], sizes: Sequence[int]) -> str:
    """The byte ranges of each disk that changed since its RCT id (a previous reference point's).

    "GetVirtualDiskChanges method of the Msvm_ImageManagementService class":
    GetVirtualDiskChanges(Path, LimitId, TargetSnapshotId, ByteOffset, ByteLength, out
    ProcessedByteLength, out ChangedByteOffsets[], out ChangedByteLengths[], out Job); every
    [in] parameter is passed, by position in that order, TargetSnapshotId as ``$null`` (it is
    only for VHD Set files). One call may stop short of ByteLength, so the loop asks again
    from ByteOffset + ProcessedByteLength.
    """
    if not len(disk_paths) == len(rct_ids) == len(sizes):
        raise HypervError("each disk needs its path, its RCT id and its size")
    lines = [_PRELUDE,
             f"$ims = Get-WmiObject -Namespace {quote(NAMESPACE)} -Class Msvm_ImageManagementService\n",
             "$out = @()\n"]
    for path, rct, size in zip(disk_paths, rct_ids, sizes, strict=True):
        lines.append(
            f"$path = {quote(path)}; $offsets = @(); $lengths = @(); $at = [uint64]0;"
            f" $size = [uint64]{int(size)}\n"
            "while ($at -lt $size) {\n"
            f"  $r = $ims.GetVirtualDiskChanges($path, {quote(rct)}, $null, $at, $size - $at)\n"
            "  if ($r.ReturnValue -ne 0) {"
            " throw \"GetVirtualDiskChanges $path failed: ReturnValue $($r.ReturnValue)\" }\n"
            "  if ($r.ProcessedByteLength -eq 0) {"
            " throw \"GetVirtualDiskChanges $path made no progress at $at\" }\n"
            "  $offsets += @($r.ChangedByteOffsets); $lengths += @($r.ChangedByteLengths)\n"
            "  $at += $r.ProcessedByteLength\n"
            "}\n"
            "$out += [pscustomobject]@{ Path = $path; Offsets = $offsets; Lengths = $lengths }\n")
    lines.append(f"{TO_JSON} -InputObject $out\n")
    return "".join(lines)


@dataclass(frozen=True)
class DiskChanges:
    path: str
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]


def parse_disk_changes(text: str) -> list[DiskChanges]:
    out = []
    for obj in _load_list(text, "GetVirtualDiskChanges"):
        path = _field(obj, "Path", str, "GetVirtualDiskChanges")
        offsets, lengths = (_ints(obj.get(k), f"{path} {k}") for k in ("Offsets", "Lengths"))
        out.append(DiskChanges(path, offsets, lengths))
    return out


def _ints(value: Any, what: str) -> tuple[int, ...]:
    items = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise HypervError(f"{what}: expected whole numbers, got {value!r}")
    return tuple(items)


def changed_extents(changes: DiskChanges, disk_size: int) -> list[Extent]:
    """The changed ranges as rehost's extents: ordered, overlapping and touching ranges
    merged, empty ones dropped. A range that is negative or ends past the disk is refused:
    the host's answer is then not about this disk, and trusting it could skip changed data."""
    if len(changes.offsets) != len(changes.lengths):
        raise HypervError(f"{changes.path}: {len(changes.offsets)} changed offsets but "
                          f"{len(changes.lengths)} lengths")
    ranges = sorted(zip(changes.offsets, changes.lengths, strict=True))
    out: list[Extent] = []
    for start, length in ranges:
        if start < 0 or length < 0 or start + length > disk_size:
            raise HypervError(f"{changes.path}: changed range {start}+{length} is outside the disk "
                              f"({disk_size} bytes)")
        if length == 0:
            continue
        if out and start <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.start, max(last.end, start + length) - last.start)
        else:
            out.append(Extent(start, length))
    return out


def export_snapshot_script(vm_id: str, snapshot_instance_id: str, share_path: str) -> str:
    """Export the recovery snapshot (its VM, disks merged as of the snapshot) to ``share_path``.

    Export-VMSnapshot (learn.microsoft.com/powershell/module/hyper-v/export-vmsnapshot)
    writes ``<Path>\\<VM name>\\Virtual Hard Disks\\*.vhdx``, the layout rehost reads as a
    Hyper-V export folder. Get-VMSnapshot -SnapshotType Recovery lists recovery snapshots
    (unsure: that Export-VMSnapshot accepts a recovery snapshot, and that a snapshot's Id is
    the GUID of its WMI InstanceID "Microsoft:<GUID>"; the documented alternative
    is Msvm_VirtualSystemManagementService.ExportSystemDefinition with an
    Msvm_VirtualSystemExportSettingData of CopySnapshotConfiguration 3,
    ExportOneSnapshotForBackup). The host itself writes the share: its computer account
    needs write access there.
    """
    return (
        _PRELUDE
        + f"$snap = Get-VMSnapshot -VM (Get-VM -Id {quote(guid(vm_id))}) -SnapshotType Recovery"
        f" | Where-Object {{ $_.Id -eq {quote(guid(snapshot_instance_id.split(':')[-1]))} }}\n"
        + "if (-not $snap) { throw 'the recovery snapshot is gone' }\n"
        + f"Export-VMSnapshot -VMSnapshot $snap -Path {quote(share_path)}\n"
        + f"{TO_JSON} -InputObject @([pscustomobject]@{{ Path = {quote(share_path)};"
        " VMName = $snap.VMName })\n"
    )


def convert_to_reference_point_script(snapshot_path: str) -> str:
    """Turn the recovery snapshot into an RCT reference point; prints its path and RCT ids.

    "ConvertToReferencePoint method of the Msvm_VirtualSystemSnapshotService class":
    ConvertToReferencePoint([in] AffectedSnapshot, [in] ReferencePointSettings, [in, out]
    ResultingReferencePoint, [out] Job), every [in] parameter passed by position (the
    settings and the resulting point as ``$null``); the snapshot is deleted as a side
    effect. "Msvm_VirtualSystemReferencePoint class": ResilientChangeTrackingIdentifiers,
    "RCT IDs corresponding to the virtual disks of the VM", one per disk (unsure: that they
    come in the order of the snapshot's disks; rehost keeps them by that order).
    """
    return (
        _PRELUDE + _WAIT_JOB
        + f"$svc = Get-WmiObject -Namespace {quote(NAMESPACE)} -Class Msvm_VirtualSystemSnapshotService\n"
        + f"$r = $svc.ConvertToReferencePoint([wmi]{quote(snapshot_path)}, $null, $null)\n"
        "$job = Wait-RehostJob $r 'ConvertToReferencePoint'\n"
        "$rp = if ($r.ResultingReferencePoint) { [wmi]$r.ResultingReferencePoint } else {"
        " $job.GetRelated('Msvm_VirtualSystemReferencePoint') | Select-Object -First 1 }\n"
        + f"{TO_JSON} -InputObject @([pscustomobject]@{{ Path = $rp.__PATH;"
        " RctIds = @($rp.ResilientChangeTrackingIdentifiers) })\n"
    )


@dataclass(frozen=True)
class ReferencePoint:
    path: str
    rct_ids: tuple[str, ...]


def parse_reference_point(text: str) -> ReferencePoint:
    obj = _only(text, "ConvertToReferencePoint", "reference point")
    return ReferencePoint(_field(obj, "Path", str, "ConvertToReferencePoint"), _text_list(obj.get("RctIds")))


def destroy_snapshot_script(snapshot_path: str) -> str:
    """Remove a recovery snapshot a failed cycle leaves ("DestroySnapshot method of the
    Msvm_VirtualSystemSnapshotService class": DestroySnapshot(AffectedSnapshot, out Job))."""
    return (
        _PRELUDE + _WAIT_JOB
        + f"$svc = Get-WmiObject -Namespace {quote(NAMESPACE)} -Class Msvm_VirtualSystemSnapshotService\n"
        + f"Wait-RehostJob ($svc.DestroySnapshot([wmi]{quote(snapshot_path)})) 'DestroySnapshot' | Out-Null\n"
        + f"{TO_JSON} -InputObject @()\n"
    )


def destroy_reference_point_script(reference_point_path: str) -> str:
    """Remove a reference point no recovery point needs any more ("DestroyReferencePoint
    method of the Msvm_VirtualSystemReferencePointService class")."""
    return (
        _PRELUDE + _WAIT_JOB
        + f"$svc = Get-WmiObject -Namespace {quote(NAMESPACE)}"
        " -Class Msvm_VirtualSystemReferencePointService\n"
        + f"Wait-RehostJob ($svc.DestroyReferencePoint([wmi]{quote(reference_point_path)}))"
        " 'DestroyReferencePoint' | Out-Null\n"
        + f"{TO_JSON} -InputObject @()\n"
    )


# -- failover ----------------------------------------------------------------------------------


def stop_vm_script(vm_id: str, timeout: float, force: bool) -> str:
    """Shut the guest down through its integration services, waiting at most ``timeout`` s.

    Stop-VM (learn.microsoft.com/powershell/module/hyper-v/stop-vm): without -TurnOff it asks
    the guest to shut down; -Force shuts it down even with applications holding unsaved data
    (only when asked: it can lose data); -AsJob lets Wait-Job bound the wait. The script
    prints the VM's State afterwards; a guest still running is the caller's error to report.
    """
    seconds = max(1, int(timeout))
    return (
        _PRELUDE
        + f"$vm = Get-VM -Id {quote(guid(vm_id))}\n"
        + "if ($vm.State.ToString() -ne 'Off') {\n"
        + f"  $job = Stop-VM -VM $vm{' -Force' if force else ''} -AsJob\n"
        + f"  if (-not (Wait-Job -Job $job -Timeout {seconds})) {{ Stop-Job -Job $job }}\n"
        + "}\n"
        + f"{TO_JSON} -InputObject @([pscustomobject]@{{"
        f" State = (Get-VM -Id {quote(guid(vm_id))}).State.ToString() }})\n"
    )


def parse_state(text: str) -> str:
    items = _load_list(text, "Get-VM")
    if len(items) != 1:
        raise HypervError(f"Get-VM: expected one VM, got {len(items)}")
    return str(_field(items[0], "State", str, "Get-VM"))
