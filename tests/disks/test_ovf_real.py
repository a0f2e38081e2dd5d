"""Descriptors VMware products wrote (vCenter, ovftool, the vCenter appliance), not us: every
one parses, and vApps, blank disks, compressed and chunked disks come out as the exporter
meant them. Where each file comes from: real_ovf/SOURCES.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from rehost.disks import vmx
from rehost.disks.ovf import Envelope, OvfError, parse_descriptor

REAL = Path(__file__).parent / "real_ovf"
OVFS = sorted((REAL / "ovf").glob("*.ovf"))
VMXS = sorted((REAL / "vmx").glob("*.vmx"))
GiB = 1 << 30


def real(name: str) -> Envelope:
    return parse_descriptor((REAL / "ovf" / name).read_bytes(), name)


def test_every_real_file_is_named_in_sources() -> None:
    listed = (REAL / "SOURCES.md").read_text()
    for f in OVFS + VMXS:
        assert f"| {f.name} |" in listed, f"{f.name}: say where it comes from in SOURCES.md"


@pytest.mark.parametrize("path", OVFS, ids=lambda p: p.name)
def test_every_real_descriptor_parses(path: Path) -> None:
    env = parse_descriptor(path.read_bytes(), path.name)
    assert env.systems
    for system in env.systems:
        assert system.id
        for disk in system.disks:
            assert disk.file is not None or (disk.capacity or 0) > 0


def test_vcenter_vapp_of_three_keeps_its_startup_order() -> None:
    env = real("3VMvApp.ovf")
    assert env.vapp == "3VMvApp"
    order = sorted((s.startup.order, s.id) for s in env.systems if s.startup)
    assert order == [((1,), "vm1"), ((2,), "vm2"), ((3,), "vm3")]
    assert {s.startup.start_delay for s in env.systems if s.startup} == {120}
    # each VM has its own disk, not the vApp's three
    assert [[d.file.href for d in s.disks if d.file] for s in env.systems] == [
        ["3VMvApp-disk1.vmdk"], ["3VMvApp-disk2.vmdk"], ["3VMvApp-disk3.vmdk"]]


def test_startup_order_is_the_sections_not_the_documents() -> None:
    """vCenter wrote vm-b1 first but starts vm-b2 first, 22 s before vm-b1 (42 s)."""
    env = real("vApp-BootOrder.ovf")
    starts = {s.id: s.startup for s in env.systems}
    assert [s.id for s in env.systems] == ["vm-b1", "vm-b2"]
    b1, b2 = starts["vm-b1"], starts["vm-b2"]
    assert b1 is not None and b2 is not None
    assert (b2.order, b2.start_delay, b2.stop_action) == ((1,), 22, "suspend")
    assert (b1.order, b1.start_delay, b1.stop_delay) == ((2,), 42, 92)
    assert b1.to_json()["vapp"] == "vApp-BootOrder"


def test_nested_vapps_order_by_level() -> None:
    env = real("nested-vapp.ovf")
    order = {s.id: s.startup.order for s in env.systems if s.startup}
    assert order == {"grandVm": (1, 1, 1), "childVm": (1, 2), "nestedRootVm": (2,)}
    assert sorted(order, key=order.__getitem__) == ["grandVm", "childVm", "nestedRootVm"]


def test_picking_a_vm_of_a_vapp() -> None:
    env = real("MultiVmVapps.ovf")
    assert env.system("testVm2", "x").id == "testVm2"
    with pytest.raises(OvfError, match=r"is a vApp of 2 virtual machines \(testVm1, testVm2\)"):
        env.system(None, "x")
    with pytest.raises(OvfError, match="has no virtual machine 'nope'"):
        env.system("nope", "x")


def test_blank_disks_have_their_capacity() -> None:
    [disk] = real("disk-no-file.ovf").systems[0].disks
    assert (disk.file, disk.capacity) == (None, 256 << 20)
    [disk] = real("no_fileref.ovf").systems[0].disks
    assert (disk.file, disk.capacity) == (None, 329197568)


def test_blank_disk_sizes_from_properties_in_gib() -> None:
    """William Lam's nested ESXi vApp: ``ovf:capacity="${esxi1-OSDiskSize}"`` in
    ``byte * 2^30``, the size being the property's default."""
    env = real("Nested-ESXi-3-Node-VSAN-Template.ovf")
    assert len(env.systems) == 3
    for system in env.systems:
        assert [(d.file, d.capacity) for d in system.disks] == [(None, 2 * GiB), (None, 4 * GiB),
                                                                (None, 8 * GiB)]


def test_vcenter_appliance_default_deployment_option() -> None:
    """The vCSA 9.1 OVF offers a dozen deployment options; the default (tiny) has 2 vCPUs,
    14 GiB, two disks with files and seven blank ones."""
    [system] = real("VMware-vCenter-Server-Appliance-9.1.0.0.25262036_OVF10.ovf").systems
    assert (system.hardware.cpus, system.hardware.memory_mib) == (2, 14336)
    assert [d.file is not None for d in system.disks] == [True, True] + [False] * 7
    assert system.disks[2].capacity == 25 * GiB


def test_ovftool_deployment_option_and_blank_scratch_disk() -> None:
    [system] = real("multiple_disks.ovf").systems
    assert [(d.disk_id, d.file.href if d.file else None) for d in system.disks] == [
        ("system_large", "disk0.vmdk"), ("data_large", "disk1.vmdk"),
        ("extra_data_large", "disk2.vmdk"), ("scratch_large", None)]
    assert system.disks[-1].capacity == 20 * GiB
    assert system.hardware.firmware == "uefi"


@pytest.mark.parametrize("name", ["comp002.ovf", "gzip_compression.ovf"])
def test_gzip_compressed_disk_files(name: str) -> None:
    [disk] = real(name).systems[0].disks
    assert disk.file is not None and disk.file.compression == "gzip"
    assert disk.file.href.endswith(".vmdk.gz") and disk.format == "vmdk"


def test_identity_compression_is_none() -> None:
    [disk] = real("identity_compression.ovf").systems[0].disks
    assert disk.file is not None and disk.file.compression == ""


@pytest.mark.parametrize("name", ["nostalgia-chunkdisk.ovf", "Nostalgia-chunkdisk-standard.ovf"])
def test_chunked_disk_files(name: str) -> None:
    [disk] = real(name).systems[0].disks
    assert disk.file is not None and disk.file.chunk_size == 7516192768
    assert disk.file.href == "Nostalgia-disk1.vmdk"


def test_esxi_vmx_with_efi_and_vpx_mac() -> None:
    m = vmx.parse((REAL / "vmx" / "esx-in-the-wild-12.vmx").read_bytes(), "x")
    assert m.name == "Auto-esx8.0-rhell9.3-efi-with-empty-cdrom"
    assert (m.firmware, m.cpus, m.memory_mib, m.guest_os) == ("uefi", None, 2048, "rhel9-64")
    assert [d.file for d in m.disks] == ["Auto-esx8.0-rhell9.3-efi-with-empty-cdrom.vmdk"]
    assert m.nics == (("VM Network", "00:50:56:a0:cf:2f"),)


def test_esxi_vmx_two_disks_one_in_a_subfolder_and_an_iso_left_out() -> None:
    m = vmx.parse((REAL / "vmx" / "esx-in-the-wild-17.vmx").read_bytes(), "x")
    assert (m.firmware, m.cpus, m.memory_mib) == ("bios", 2, 4096)
    assert [(d.slot, d.file) for d in m.disks] == [
        ("scsi0:0", "esx8.0-win11-with-second-disk-in-subfolder.vmdk"),
        ("scsi0:1", "subfolder/esx8.0-win11-with-second-disk-in-subfolder_1.vmdk")]
    assert m.nics == (("Mgmt Network", "00:50:56:a5:b8:68"),)


def test_fusion_vmx_two_nics() -> None:
    m = vmx.parse((REAL / "vmx" / "fusion-in-the-wild-1.vmx").read_bytes(), "x")
    assert (m.name, m.cpus, m.memory_mib, m.guest_os) == ("ATTM_VM", 2, 3572, "winxppro")
    assert m.nics == (("VMnet0", "00:0c:29:3b:64:ea"), ("VMnet0", "00:0c:29:3b:64:f4"))
    assert [d.slot for d in m.disks] == ["scsi0:0"]  # the IDE CD-ROM is no disk


def test_vmx_refusals() -> None:
    with pytest.raises(vmx.VmxError, match=r"not a \.vmx file"):
        vmx.parse(b"hello world\n", "a.vmx")
    with pytest.raises(vmx.VmxError, match="names no virtual hard disk"):
        vmx.parse(b'.encoding = "UTF-8"\ndisplayName = "x"\n', "a.vmx")
    with pytest.raises(vmx.VmxError, match="not UTF-8"):
        vmx.parse(b"\xff\xfe\x00", "a.vmx")
