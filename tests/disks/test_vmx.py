"""VMX files: what VMware writes (case-insensitive keys, ``|XX`` escapes, ``present``
switches, static and generated MACs, a boot disk order) and where a copied VM folder's disks
are. The real .vmx files are in test_ovf_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from rehost.disks import vmx
from rehost.sources.image_vmx import disk_file, safe_name

BASE = b'.encoding = "UTF-8"\nconfig.version = "8"\n'


def parse(text: str) -> vmx.VmxMachine:
    return vmx.parse(BASE + text.encode(), "t.vmx")


def test_keys_are_case_insensitive_and_values_unescaped() -> None:
    m = parse('DisplayName = "web |22one|22"\nSCSI0:0.FileName = "a.vmdk"\nmemsize = "512"\n'
              "numvcpus = 4\n")
    assert (m.name, m.memory_mib, m.cpus) == ('web "one"', 512, 4)
    assert [d.file for d in m.disks] == ["a.vmdk"]


def test_absent_devices_cdroms_and_isos_are_no_disks() -> None:
    m = parse('scsi0:0.fileName = "a.vmdk"\nscsi0:1.fileName = "b.vmdk"\nscsi0:1.present = "FALSE"\n'
              'ide1:0.fileName = "x.iso"\nide1:0.deviceType = "cdrom-image"\n'
              'sata0:0.fileName = "c.vmdk"\nsata0.present = "FALSE"\n'
              'nvme0:0.fileName = "d.vmdk"\n')
    assert [d.slot for d in m.disks] == ["scsi0:0", "nvme0:0"]


def test_boot_disk_first() -> None:
    m = parse('scsi0:0.fileName = "data.vmdk"\nide0:0.fileName = "boot.vmdk"\n'
              'bios.hddOrder = "ide0:0"\n')
    assert [d.file for d in m.disks] == ["boot.vmdk", "data.vmdk"]


def test_static_mac_wins_over_generated_and_absent_nics_are_skipped() -> None:
    m = parse('scsi0:0.fileName = "a.vmdk"\n'
              'ethernet0.present = "TRUE"\nethernet0.addressType = "static"\n'
              'ethernet0.address = "00:50:56:01:02:03"\nethernet0.generatedAddress = "00:0c:29:00:00:01"\n'
              'ethernet0.networkName = "prod"\n'
              'ethernet1.present = "FALSE"\nethernet1.generatedAddress = "00:0c:29:00:00:02"\n'
              'ethernet2.present = "TRUE"\nethernet2.connectionType = "nat"\n'
              'ethernet2.generatedAddress = "not a mac"\n')
    assert m.nics == (("prod", "00:50:56:01:02:03"), ("nat", ""))


def test_firmware() -> None:
    assert parse('scsi0:0.fileName = "a.vmdk"\nfirmware = "efi"\n').firmware == "uefi"
    assert parse('scsi0:0.fileName = "a.vmdk"\n').firmware == "bios"


def test_oversized_file_is_refused() -> None:
    with pytest.raises(vmx.VmxError, match="too large"):
        vmx.parse(BASE + b"#" * vmx.MAX_VMX, "big.vmx")


def test_datastore_path_is_found_in_the_copied_folder(tmp_path: Path) -> None:
    (tmp_path / "vm.vmx").write_text("")
    (tmp_path / "vm.vmdk").write_text("")
    disk = vmx.VmxDisk("scsi", 0, 0, "/vmfs/volumes/5f3a-11/vm/vm.vmdk")
    assert disk_file(tmp_path / "vm.vmx", disk) == tmp_path / "vm.vmdk"
    missing = vmx.VmxDisk("scsi", 0, 1, "[datastore1] other/other.vmdk")
    with pytest.raises(vmx.VmxError, match=r"disk scsi0:1 \(\[datastore1\] other/other\.vmdk\) is not in "
                                           "the VM's folder"):
        disk_file(tmp_path / "vm.vmx", missing)


def test_disks_outside_the_folder_are_refused(tmp_path: Path) -> None:
    disk = vmx.VmxDisk("scsi", 0, 0, "../other/secret.vmdk")
    with pytest.raises(vmx.VmxError, match=r"refers to '\.\./other/secret\.vmdk' outside the VM's folder"):
        disk_file(tmp_path / "vm.vmx", disk)


def test_display_names_become_machine_names() -> None:
    assert safe_name("Windows XP Pro (copy)") == "Windows-XP-Pro-copy"
