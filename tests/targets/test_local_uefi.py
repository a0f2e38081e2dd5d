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
    rehost(vault, "failover", "gen2", "--cleanup")
