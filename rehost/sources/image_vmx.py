"""A VMware VM folder as an image source: its ``.vmx`` names the machine and its VMDKs.

A folder copied off a datastore keeps its files together but not the datastore paths: a
disk named by an absolute path (``/vmfs/volumes/<uuid>/vm/vm.vmdk``) is looked for by its
file name in the ``.vmx``'s folder, and said so. No disk may come from outside the folder
(a ``.vmx`` from elsewhere must not make rehost read ``/etc/shadow``).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from rehost.disks import probe, vmx
from rehost.disks.vmx import VmxError
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec


def discover_vmx(name: str, path: Path, settings: dict[str, Any]) -> MachineSpec:
    """The machine ``path`` (a .vmx) describes, its disks probed in the machine's order."""
    if not path.is_file():
        raise VmxError(f"{path}: no such file")
    if path.stat().st_size > vmx.MAX_VMX:
        raise VmxError(f"{path}: too large for a .vmx file")
    machine = vmx.parse(path.read_bytes(), str(path))
    disks = []
    for i, disk in enumerate(machine.disks):
        file = disk_file(path, disk)
        img = probe(file, "vmdk")
        disks.append(DiskSpec(index=i, size=img.virtual_size, ref=str(file.absolute()),
                              format=img.format, controller=disk.bus))
    default = MachineSpec(name="")
    return MachineSpec(
        name=name or safe_name(machine.name or path.stem), disks=tuple(disks), settings=settings,
        firmware=Firmware(machine.firmware), cpus=machine.cpus or default.cpus,
        memory_mib=machine.memory_mib or default.memory_mib,
        nics=tuple(NicSpec(mac=mac, network=network) for network, mac in machine.nics),
        guest_os=machine.guest_os)


def safe_name(text: str) -> str:
    """A name from a descriptor ("Windows XP Pro") made a valid machine name ("Windows-XP-Pro")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64]


def disk_file(vmx_path: Path, disk: vmx.VmxDisk) -> Path:
    """Where ``disk``'s VMDK is in the copied folder; a VmxError naming it if nowhere."""
    folder = vmx_path.absolute().parent
    name = PurePosixPath(disk.file.replace("\\", "/"))
    if name.is_absolute() or ":" in disk.file or disk.file.startswith("["):
        candidate = folder / name.name  # a datastore path ("/vmfs/volumes/..", "[ds] vm/x.vmdk")
    elif ".." in name.parts:
        raise VmxError(f"{vmx_path}: disk {disk.slot} refers to {disk.file!r} outside the VM's folder")
    else:
        candidate = folder / name
    if not candidate.is_file():
        raise VmxError(f"{vmx_path}: disk {disk.slot} ({disk.file}) is not in the VM's folder "
                       f"(looked for {candidate})")
    return candidate
