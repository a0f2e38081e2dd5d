"""Small synthetic Linux disks for the inspection tests: not bootable, but with exactly the
files a readiness report reads (os-release, a real kernel image under a Debian name, an
initramfs listing chosen modules, fstab, network configuration, a swap partition), so a test
knows what the report must say.

Built without loop devices or root: the ext4 root is made by ``mke2fs -d`` from a staging
folder, the swap area by ``mkswap`` on a file, and both are copied into an msdos-partitioned
raw image (partition 1: root, partition 2: swap).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from rehost.testkit.tinylinux import _Cpio, find_kernel

_MIB = 1 << 20
ROOT_UUID = "6b1f4c3e-1f0a-4a7e-9a55-0b9c3f7e2a11"
SWAP_UUID = "0d3e6a52-5b8e-4c1e-8f3a-7c2b9e4d1f22"

DEBIAN_OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""


def module_paths(version: str, modules: Sequence[str]) -> dict[str, bytes]:
    """initramfs entries for ``modules`` in a Debian layout (contents are placeholders)."""
    root = f"usr/lib/modules/{version}/kernel/drivers"
    return {f"{root}/{m}.ko.xz": b"\xfd7zXZ\x00placeholder" for m in modules}


def initramfs(version: str, modules: Sequence[str], builtin: Sequence[str] = (), *,
              microcode: bool = True) -> bytes:
    """Like initramfs-tools': an uncompressed early-microcode archive, then the gzip'ed main one."""
    out = b""
    if microcode:
        early = _Cpio()
        for d in ("kernel", "kernel/x86", "kernel/x86/microcode"):
            early.dir(d)
        early.file("kernel/x86/microcode/GenuineIntel.bin", b"\0" * 64)
        out += early.finish()
    main = _Cpio()
    for d in ("usr", "usr/lib", "usr/lib/modules", f"usr/lib/modules/{version}"):
        main.dir(d)
    for path, data in module_paths(version, modules).items():
        main.file(path, data)
    main.file(f"usr/lib/modules/{version}/modules.builtin",
              "".join(f"kernel/drivers/{m}.ko\n" for m in builtin).encode())
    return out + gzip.compress(main.finish(), mtime=0)


def build_guest_disk(
    dest: Path,
    *,
    files: Mapping[str, str | bytes] = {},  # read only
    modules: Sequence[str] = ("virtio_blk", "virtio_net", "virtio_pci", "ext4"),
    builtin: Sequence[str] = (),
    cmdline: str = "root=/dev/sda1 ro quiet",
    root_mib: int = 40,
    swap_mib: int = 8,
) -> Path:
    """A raw image: Debian 12 files, ``/boot/vmlinuz-<host kernel version>`` (the host's real
    kernel, so its header carries that version) with ``initrd.img-<version>`` holding
    ``modules`` (and ``builtin`` as its modules.builtin), a grub.cfg with ``cmdline``, and
    ``files`` (path -> content) on top. Partition 2 is a swap area (UUID ``SWAP_UUID``)."""
    kernel = find_kernel()
    v = kernel.version
    tree: dict[str, str | bytes] = {
        "etc/os-release": DEBIAN_OS_RELEASE, "etc/debian_version": "12.8\n", "etc/hostname": "guest\n",
        f"boot/vmlinuz-{v}": kernel.image.read_bytes(),
        f"boot/initrd.img-{v}": initramfs(v, modules, builtin),
        "boot/grub/grub.cfg": (f"set default=\"0\"\nmenuentry 'Debian GNU/Linux' {{\n"
                               f"\tlinux\t/boot/vmlinuz-{v} {cmdline}\n\tinitrd\t/boot/initrd.img-{v}\n}}\n"),
        f"lib/modules/{v}/modules.builtin": "".join(f"kernel/drivers/{m}.ko\n" for m in builtin),
        "bin/sh": b"", "usr/bin/.keep": b"", "var/lib/dpkg/status": "",
    }
    tree.update(files)
    with tempfile.TemporaryDirectory(prefix="rehost-guestdisk-") as tmp:
        stage = Path(tmp) / "root"
        for rel, content in tree.items():
            p = stage / rel.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content.encode() if isinstance(content, str) else content)
        root_img, swap_img = Path(tmp) / "root.img", Path(tmp) / "swap.img"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "guest-root", "-U", ROOT_UUID,
                        "-d", str(stage), str(root_img), f"{root_mib}M"], check=True, capture_output=True)
        with swap_img.open("wb") as f:
            f.truncate(swap_mib * _MIB)
        subprocess.run(["mkswap", "-U", SWAP_UUID, "-L", "guest-swap", str(swap_img)], check=True,
                       capture_output=True)
        dest = Path(dest)
        with dest.open("wb") as f:
            f.truncate((root_mib + swap_mib + 2) * _MIB)
        subprocess.run(["parted", "-s", str(dest), "--", "mklabel", "msdos",
                        "mkpart", "primary", "ext4", "1MiB", f"{1 + root_mib}MiB",
                        "mkpart", "primary", "linux-swap", f"{1 + root_mib}MiB",
                        f"{1 + root_mib + swap_mib}MiB"],
                       check=True, capture_output=True)  # fmt: skip
        fd = os.open(dest, os.O_WRONLY)
        try:
            for img, offset in ((root_img, _MIB), (swap_img, (1 + root_mib) * _MIB)):
                os.pwrite(fd, img.read_bytes(), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    return dest
