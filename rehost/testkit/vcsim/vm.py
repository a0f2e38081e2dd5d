"""A VM with a real disk on vcsim: a raw image placed as a flat VMDK in the simulator's datastore.

vcsim's own VMs have empty disk files; rehost's vSphere tests need bytes that mean something
(the tiny Linux that boots after failover). ``create_vm`` writes the image as
``<name>/<name>-flat.vmdk`` plus its VMFS descriptor ``<name>/<name>.vmdk`` into the
datastore's folder, then creates the VM through the vSphere API (``CreateVM_Task``) with that
disk (no file operation: vcsim keeps the existing files), a vmxnet3 NIC with a fixed MAC,
and powers it on. Tests then write into the flat file between cycles, as a guest would.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rehost.testkit.vcsim import Vcsim, VcsimError


@dataclass(frozen=True)
class PlacedVm:
    moref: str
    name: str
    device_key: int
    #: the disk backing's datastore path, ``[LocalDS_0] tiny/tiny.vmdk``
    file_name: str
    #: the flat file in the simulator's datastore folder (write here to change the disk)
    flat: Path
    mac: str
    #: further disks: (device key, datastore path, flat file), in the VM's disk order
    data_disks: tuple[tuple[int, str, Path], ...] = ()


def descriptor(flat_name: str, size: int) -> str:
    """A VMFS (flat) VMDK descriptor, as ESXi writes one next to ``-flat.vmdk``."""
    sectors = size // 512
    cylinders = max(1, min(65535, sectors // (255 * 63)))
    return (
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="vmfs"\n\n# Extent description\n'
        f'RW {sectors} VMFS "{flat_name}"\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.adapterType = "lsilogic"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\nddb.geometry.heads = "255"\nddb.geometry.sectors = "63"\n'
        'ddb.virtualHWVersion = "13"\n')


def connect(vc: Vcsim) -> Any:
    """A pyvmomi service instance straight to vcsim (plain HTTP, any user)."""
    from pyVim.connect import SmartConnect

    host, port = vc.address
    return SmartConnect(host=host, port=port, user="user", pwd="pass", protocol="http")


def _place(vc: Vcsim, image: Path, folder_name: str, disk_name: str) -> tuple[str, Path, int]:
    """Copy ``image`` into the datastore as ``disk_name``-flat.vmdk + descriptor."""
    size = image.stat().st_size
    if size % 512:
        raise VcsimError(f"{image} is not a whole number of sectors")
    ds_name, ds = next(iter(vc.datastores.items()))
    folder = ds.folder / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    flat = folder / f"{disk_name}-flat.vmdk"
    shutil.copyfile(image, flat)
    (folder / f"{disk_name}.vmdk").write_text(descriptor(flat.name, size))
    return f"[{ds_name}] {folder_name}/{disk_name}.vmdk", flat, size


def create_vm(vc: Vcsim, image: Path, name: str = "tiny", *, cpus: int = 2, memory_mib: int = 256,
              mac: str = "00:50:56:3f:00:01", power_on: bool = True,
              data_disks: tuple[Path, ...] = ()) -> PlacedVm:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    file_name, flat, size = _place(vc, image, name, name)
    extra = [_place(vc, img, name, f"{name}_{i}") for i, img in enumerate(data_disks, 1)]
    ds_name = next(iter(vc.datastores))

    si = connect(vc)
    try:
        content = si.RetrieveContent()
        dc = content.rootFolder.childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity if isinstance(c, vim.ClusterComputeResource))
        scsi = vim.vm.device.VirtualLsiLogicController(key=1000, busNumber=0, sharedBus="noSharing")
        disks = [vim.vm.device.VirtualDisk(
            key=2000 + unit, controllerKey=1000, unitNumber=unit, capacityInKB=n // 1024, capacityInBytes=n,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent",
                                                                  thinProvisioned=False))
            for unit, (path, _, n) in enumerate([(file_name, flat, size), *extra])]
        nic = vim.vm.device.VirtualVmxnet3(
            key=4000, addressType="manual", macAddress=mac,
            backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))
        add = vim.vm.device.VirtualDeviceSpec.Operation.add
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherLinux64Guest", numCPUs=cpus, memoryMB=memory_mib, firmware="bios",
            files=vim.vm.FileInfo(vmPathName=f"[{ds_name}] {name}"),
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation=add, device=d)
                          for d in (scsi, *disks, nic)])
        task = dc.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool)
        _wait(task)
        vm = task.info.result
        if power_on:
            _wait(vm.PowerOnVM_Task())
        keys = [int(d.key) for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        more = tuple((k, path, f) for k, (path, f, _) in zip(keys[1:], extra, strict=True))
        return PlacedVm(vm._moId, name, keys[0], file_name, flat, mac, more)
    finally:
        Disconnect(si)


def _wait(task: Any) -> None:
    import time

    while task.info.state not in ("success", "error"):
        time.sleep(0.05)
    if task.info.state == "error":
        raise VcsimError(f"vcsim task failed: {task.info.error}")
