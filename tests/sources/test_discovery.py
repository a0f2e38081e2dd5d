"""What sources discover besides disks: an OVF descriptor's hardware, a running QEMU's over QMP,
an agent's inventory. Only what the source states plainly; unknown stays the default."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.sources import image, physical, qemu_plugin
from rehost.spec import Firmware, MachineSpec, NicSpec

MiB = 1 << 20

DISK_ITEM = """<Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType></Item>"""
OS = """<OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest"><Info>os</Info>
    </OperatingSystemSection>"""
HARDWARE = """<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>3</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>00:50:56:aa:bb:01</rasd:Address><rasd:Connection>VM Network</rasd:Connection>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Connection>backup-lan</rasd:Connection>
        <rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>"""


def ovf(os: str = OS, hardware: str = HARDWARE) -> str:
    """A VMware-shaped descriptor of machine app01 with one qcow2 disk next to it."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="app-disk1.qcow2" ovf:id="file1"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="app01">
    <Info>A virtual machine</Info>
    {os}
    <VirtualHardwareSection><Info>hw</Info>
      {DISK_ITEM}
      {hardware}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def _qcow2(path: Path, size: int = 16 * MiB) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
    return path


def test_ovf_gives_name_cpus_memory_nics_os_and_firmware(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path / "app-disk1.qcow2")
    (tmp_path / "app01.ovf").write_text(ovf())
    spec = image.discover("", image.ImageConfig(paths=(str(tmp_path / "app01.ovf"),)))
    assert spec.name == "app01"
    assert (spec.cpus, spec.memory_mib, spec.firmware, spec.guest_os) == (4, 3072, Firmware.UEFI,
                                                                       "debian11_64Guest")
    assert spec.nics == (NicSpec("00:50:56:aa:bb:01", "VM Network"), NicSpec("", "backup-lan"))
    [d] = spec.disks
    assert (d.index, d.ref, d.format, d.size) == (0, str(disk), "qcow2", 16 * MiB)
    assert spec.settings == {"paths": [str(tmp_path / "app01.ovf")]}


def test_an_ovf_that_says_nothing_leaves_the_defaults(tmp_path: Path) -> None:
    _qcow2(tmp_path / "app-disk1.qcow2")
    (tmp_path / "x.ovf").write_text(ovf(os="", hardware=""))
    spec = image.discover("named", image.ImageConfig(paths=(str(tmp_path / "x.ovf"),)))
    default = MachineSpec(name="")
    assert spec.name == "named" and len(spec.disks) == 1
    assert (spec.cpus, spec.memory_mib, spec.firmware, spec.nics, spec.guest_os) == (
        default.cpus, default.memory_mib, default.firmware, (), None)


def test_bare_images_give_disks_only(tmp_path: Path) -> None:
    a, b = _qcow2(tmp_path / "a.qcow2"), _qcow2(tmp_path / "b.qcow2", 32 * MiB)
    spec = image.discover("vm", image.ImageConfig(paths=(str(a), str(b))))
    assert [(d.index, d.ref, d.size) for d in spec.disks] == [(0, str(a), 16 * MiB), (1, str(b), 32 * MiB)]
    assert spec.nics == () and spec.guest_os is None


def test_agent_inventory_fills_the_physical_spec() -> None:
    inventory = {
        "os": {"pretty_name": "Debian GNU/Linux 12 (bookworm)"}, "cpus": 8, "memory": 16 << 30,
        "disks": [{"index": 0, "path": "/dev/sda", "size": 20 << 30}],
        "nics": [{"name": "lo", "mac": "00:00:00:00:00:00"}, {"name": "eth0", "mac": "52:54:00:01:02:03"}],
    }
    before = physical.discover("srv1", physical.PhysicalConfig())
    assert before.disks == () and before.settings == {"agent": "srv1"}
    spec = physical.with_inventory(before, inventory)
    assert (spec.cpus, spec.memory_mib, spec.guest_os) == (8, 16384, "Debian GNU/Linux 12 (bookworm)")
    assert spec.nics == (NicSpec("52:54:00:01:02:03"),)
    assert [(d.ref, d.size, d.format) for d in spec.disks] == [("/dev/sda", 20 << 30, "agent")]


@pytest.fixture
def paused_vm(tmp_path: Path, need_qemu: None) -> Iterator[Path]:
    """A QEMU that never runs its guest (-S): 2 vCPUs, 320 MiB, two NICs, one disk; QMP only."""
    disk = _qcow2(tmp_path / "d.qcow2")
    sock = tmp_path / "qmp.sock"
    vm = subprocess.Popen([
        "qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "accel=tcg",
        "-smp", "2", "-m", "320", "-drive", f"file={disk},if=none,id=drive0",
        "-device", "virtio-blk-pci,drive=drive0", "-netdev", "user,id=n0",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,id=nic0", "-netdev", "user,id=n1",
        "-device", "e1000,netdev=n1,mac=52:54:00:ab:cd:ef", "-qmp", f"unix:{sock},server=on,wait=off",
    ])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert vm.poll() is None and time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.05)
        yield sock
    finally:
        vm.kill()
        vm.wait()


def test_qmp_gives_cpus_memory_macs_and_bios(paused_vm: Path) -> None:
    spec = qemu_plugin.discover("vm1", qemu_plugin.QemuConfig(qmp_socket=str(paused_vm)))
    assert (spec.cpus, spec.memory_mib, spec.firmware) == (2, 320, Firmware.BIOS)
    assert {n.mac for n in spec.nics} == {"52:54:00:12:34:56", "52:54:00:ab:cd:ef"}
    [d] = spec.disks
    assert (d.ref, d.format, d.size) == ("drive0", "qemu", 16 * MiB)
    assert spec.settings == {"qmp_socket": str(paused_vm.absolute())}
