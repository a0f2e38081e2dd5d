"""A UEFI machine (a Hyper-V Generation 2 / VMware EFI disk: GPT, an EFI system partition, no
BIOS boot code) on the local target: its firmware is found on the disk, the test failover
runs it on q35 with OVMF, and the console shows it came through the EFI boot loader; a
target with too little memory for OVMF refuses it before anything is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import build_tiny_linux
from tests.cli_helpers import rehost

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_qemu")]


@pytest.fixture(scope="module")
def uefi_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import _can_build

    reason = _can_build()
    if reason:
        pytest.skip(reason)
    return build_tiny_linux(tmp_path_factory.mktemp("uefi") / "gen2.img", size_mib=96, firmware="uefi",
                            mode="stay", marker="gen2")


def test_a_uefi_disk_boots_on_q35_with_ovmf(tmp_path: Path, uefi_disk: Path) -> None:
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "kvm", "--path", str(tmp_path / "kvm"), "--memory-mib", "512")
    rehost(vault, "source", "add-image", "gen2", str(uefi_disk))
    assert rehost(vault, "machines", "--json").json()[0]["spec"]["firmware"] == "uefi"  # found on the disk
    rehost(vault, "replicate", "gen2")

    rehost(vault, "target", "add-local", "small", "--path", str(tmp_path / "small"))  # 256 MiB
    refused = rehost(vault, "failover", "gen2", "--test", "--target", "small", check=False)
    assert refused.code != 0 and "uefi memory: 256 MiB is too little for OVMF" in refused.err, refused.err
    assert not (tmp_path / "small" / "gen2-test").exists()

    try:
        _boots_on_q35(tmp_path, vault)
    finally:  # never leave the test machine running
        rehost(vault, "failover", "gen2", "--cleanup", check=False)


def _boots_on_q35(tmp_path: Path, vault: Path) -> None:
    job = rehost(vault, "failover", "gen2", "--test", "--target", "kvm", "--json").json()
    assert job["state"] == "succeeded", job
    boot = next(s for s in job["steps"] if s["name"] == "verify_boot")
    assert "REHOST-BOOT-OK marker=gen2" in boot["detail"]
    vm = tmp_path / "kvm" / "gen2-test"
    assert json.loads((vm / "vm.json").read_text())["firmware"] == "uefi"
    assert (vm / "OVMF_VARS.fd").stat().st_size > 0  # the machine's own variable store
    console = (vm / "console.log").read_text(errors="replace")
    assert "REHOST-UEFI grub" in console  # through the ESP's boot loader, not SeaBIOS
    pid = int((vm / "qemu.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"q35" in cmdline and any(b"OVMF_CODE" in a for a in cmdline)


def test_a_loader_off_the_fallback_path_is_found_then_fixed_up_on_the_copy(tmp_path: Path) -> None:
    """GRUB only in the distribution's folder (as Debian's grub-install leaves it): a new VM's
    firmware would start nothing. Readiness finds it on the ESP and stops the test failover;
    the uefi-fallback fix-up copies it to /EFI/BOOT/BOOTX64.EFI on the copy, which then boots."""
    pytest.importorskip("guestfs", reason="python3-guestfs is not installed (run scripts/install)")
    from tests.conftest import _can_build

    if _can_build():
        pytest.skip(str(_can_build()))
    disk = build_tiny_linux(tmp_path / "vendor.img", size_mib=96, firmware="uefi", mode="stay",
                            marker="vendor", efi_loader="/EFI/rehost/grubx64.efi")
    vault = tmp_path / "vault"
    env = {"REHOST_READINESS_INSPECT": "on"}  # tests/conftest.py turns it off for other tests
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "kvm", "--path", str(tmp_path / "kvm"), "--memory-mib", "512")
    rehost(vault, "source", "add-image", "vendor", str(disk))
    rehost(vault, "replicate", "vendor")
    refused = rehost(vault, "failover", "vendor", "--test", check=False, env=env)
    assert refused.code != 0 and "UEFI boot loader at the fallback path" in refused.err, refused.err
    assert "/EFI/rehost/grubx64.efi" in refused.err and "--fix-up uefi-fallback" in refused.err
    try:
        job = rehost(vault, "failover", "vendor", "--test", "--fix-up", "uefi-fallback", "--json",
                     env=env).json()
        assert job["state"] == "succeeded", job
        steps = {s["name"]: s["detail"] for s in job["steps"]}
        assert "/EFI/rehost/grubx64.efi copied to /EFI/BOOT/BOOTX64.EFI" in steps["fix_up"], steps["fix_up"]
        assert "REHOST-BOOT-OK marker=vendor" in steps["verify_boot"]
        console = (tmp_path / "kvm" / "vendor-test" / "console.log").read_text(errors="replace")
        assert "REHOST-UEFI grub" in console
    finally:
        rehost(vault, "failover", "vendor", "--cleanup", check=False)
