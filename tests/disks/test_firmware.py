"""Which firmware boots a disk, from its first sectors: labels made by sgdisk and parted (the
tools a user's disks come from), in raw and through qemu-img (qcow2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rehost.disks.firmware import detect, firmware_of
from rehost.disks.formats import probe
from rehost.spec import Firmware
from rehost.testkit.diskimage import MBR_CANDIDATES, first_existing

MiB = 1 << 20


def _disk(path: Path, *sgdisk: str) -> Path:
    with path.open("wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sgdisk", *sgdisk, str(path)], check=True, capture_output=True)
    return path


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_gpt_with_an_esp_and_no_boot_code_is_uefi(tmp_path: Path, fmt: str) -> None:
    raw = _disk(tmp_path / "gen2.raw", "-n", "1:2048:+32M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300")
    image = raw
    if fmt == "qcow2":
        image = tmp_path / "gen2.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    assert detect(probe(image)) == Firmware.UEFI
    # the ESP need not be the first partition
    later = _disk(tmp_path / "later.raw", "-n", "1:2048:+16M", "-t", "1:8300", "-n", "2:0:0", "-t", "2:ef00")
    assert detect(probe(later)) == Firmware.UEFI


def test_bios_boot_code_wins_and_no_esp_is_unknown(tmp_path: Path) -> None:
    hybrid = _disk(tmp_path / "hybrid.raw", "-n", "1:2048:+1M", "-t", "1:ef02",
                   "-n", "2:0:+16M", "-t", "2:ef00")
    mbr = first_existing(MBR_CANDIDATES, "syslinux mbr.bin")
    with hybrid.open("r+b") as f:  # a cloud image: BIOS boot code and an ESP
        f.write(mbr.read_bytes()[:440])
    assert detect(probe(hybrid)) == Firmware.BIOS
    no_esp = _disk(tmp_path / "data.raw", "-n", "1:2048:0", "-t", "1:8300")
    assert detect(probe(no_esp)) is None
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(MiB))
    assert detect(probe(blank)) is None
    assert firmware_of(b"") is None and firmware_of(bytes(1024)) is None
