"""Which firmware boots a disk: read from its first sectors, for disks that come without a
machine description (bare images, Hyper-V export folders whose .vmcx is not read).

Why from the disk: a Hyper-V Generation 2 machine (or a VMware VM with EFI firmware) boots
from a GPT disk through its EFI system partition and has no BIOS boot code in its MBR; started
with SeaBIOS it finds nothing to boot. A disk with BIOS boot code in its MBR boots with a BIOS
(whatever else it has: cloud images often carry both). Anything else is not decided here.
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from pathlib import Path

from rehost.disks.formats import CHAIN_FORMATS, DiskImage, qemu_image_opts
from rehost.errors import RehostError
from rehost.spec import Firmware

#: the GPT partition type of an EFI system partition, and as it is on disk (mixed-endian)
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_TYPE = uuid.UUID(ESP_GUID).bytes_le
#: where a UEFI firmware without boot entries for the disk looks for a loader (x86-64)
FALLBACK_LOADER = "/EFI/BOOT/BOOTX64.EFI"
SECTOR = 512
#: the MBR, the GPT header and 32 sectors of entries (128 entries of 128 bytes)
HEAD_SECTORS = 34


def firmware_of(head: bytes) -> Firmware | None:
    """UEFI: a GPT label with an EFI system partition and no boot code in the MBR; BIOS: boot
    code in the MBR; None: cannot tell (no label, or a GPT disk without an ESP)."""
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        return None
    if any(head[:440]):
        return Firmware.BIOS
    if head[446 + 4] != 0xEE or head[SECTOR:SECTOR + 8] != b"EFI PART":
        return None
    table = int.from_bytes(head[SECTOR + 72:SECTOR + 80], "little") * SECTOR
    count = int.from_bytes(head[SECTOR + 80:SECTOR + 84], "little")
    size = int.from_bytes(head[SECTOR + 84:SECTOR + 88], "little")
    if size < 128:
        return None
    for i in range(min(count, 128)):
        entry = head[table + i * size:table + i * size + 16]
        if len(entry) < 16:
            break
        if entry == ESP_TYPE:
            return Firmware.UEFI
    return None


def read_head(image: DiskImage) -> bytes:
    """The disk's first ``HEAD_SECTORS`` sectors as the guest sees them (through qemu-img for
    formats other than raw, through rehost's own reader for a differencing VHDX chain; b""
    when it cannot be read)."""
    if image.format in CHAIN_FORMATS:  # a checkpoint chain: rehost's own reader merges it
        from rehost.disks.vhdx_chain import ChainReader

        try:
            reader = ChainReader(image.path)
        except RehostError:
            return b""
        try:
            return reader.pread(0, min(HEAD_SECTORS * SECTOR, image.virtual_size))
        finally:
            reader.close()
    if image.format == "raw":
        with open(image.path, "rb") as f:
            f.seek(image.offset)
            return f.read(min(HEAD_SECTORS * SECTOR, image.virtual_size))
    with tempfile.TemporaryDirectory(prefix="rehost-head-") as d:
        out = Path(d) / "head.raw"
        count = min(HEAD_SECTORS, image.virtual_size // SECTOR)
        r = subprocess.run(["qemu-img", "dd", "-O", "raw", f"bs={SECTOR}", f"count={count}",
                            f"if={qemu_image_opts(image)}", f"of={out}"], capture_output=True, text=True)
        return out.read_bytes() if r.returncode == 0 and out.exists() else b""


def detect(image: DiskImage) -> Firmware | None:
    return firmware_of(read_head(image))
