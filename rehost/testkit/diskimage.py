"""Raw disk images built and edited on the host for tests: an msdos-partitioned disk, an ext4
that extlinux can boot, loop devices and mounts that are always undone. Shared by the tiny
Linux and the Debian test guests (``rehost.testkit.tinylinux``, ``rehost.testkit.debian``);
needs root (losetup, mount)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from rehost.errors import RehostError

_MIB = 1024 * 1024


class DiskImageError(RehostError):
    """Building or editing a test image failed (missing tool, loop/mount trouble)."""

    user_error = False


MBR_CANDIDATES = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/EXTLINUX/mbr.bin")


def run_tool(cmd: Sequence[str | Path], *, input_: bytes | None = None) -> str:
    """Run a tool, return its stdout; raise with its stderr so failures explain themselves."""
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.run(args, input=input_, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise DiskImageError(f"{args[0]} not found: install the Debian package providing it") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise DiskImageError(f"{' '.join(args)} failed (exit {proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def first_existing(candidates: Iterable[str], what: str) -> Path:
    for c in candidates:
        if os.path.exists(c):
            return Path(c)
    raise DiskImageError(f"{what} not found (looked in {', '.join(candidates)})")


def require_root() -> None:
    if os.geteuid() != 0:
        raise DiskImageError("building/editing the tiny Linux image needs root (losetup, mount)")


def wait_partition(loopdev: str, timeout: float = 10.0) -> str:
    """The partition-1 node of a ``losetup -P`` device; nodes may appear late or never.

    Seen on this project's CI host: ``losetup -P`` sets ``partscan`` but the kernel never
    adds the partition until ``partx -a`` asks; in containers with a static /dev the node
    may also be missing while sysfs knows the partition, so we ``mknod`` it.
    """
    name = Path(loopdev).name
    part = f"{loopdev}p1"
    sys_part = Path("/sys/block", name, f"{name}p1")

    def ready() -> bool:
        return os.path.exists(part) and stat.S_ISBLK(os.stat(part).st_mode)

    start = time.monotonic()
    asked = False
    while time.monotonic() - start < timeout:
        if ready():
            return part
        waited = time.monotonic() - start
        if not sys_part.exists() and not asked and waited > 0.3:
            subprocess.run(["partx", "-a", loopdev], capture_output=True, check=False)
            asked = True
        elif sys_part.exists() and waited > 1.0:
            major, minor = (sys_part / "dev").read_text().strip().split(":")
            with contextlib.suppress(FileExistsError):
                os.mknod(part, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
        time.sleep(0.02)
    raise DiskImageError(f"partition node {part} did not appear within {timeout:.0f}s")


@contextlib.contextmanager
def loop_device(image: Path, *args: str) -> Iterator[str]:
    """``losetup --find --show ARGS image``; the device is detached on exit (retried)."""
    dev = run_tool(["losetup", "--find", "--show", *args, str(image)]).strip()
    try:
        yield dev
    finally:
        # A just-unmounted fs can keep the device busy for a moment: retry detach.
        err = ""
        for attempt in range(10):
            r = subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
            if r.returncode == 0:
                break
            err = r.stderr.decode(errors="replace").strip()
            time.sleep(0.1 * (attempt + 1))
        else:
            if sys.exc_info()[0] is None:  # do not hide the error that brought us here
                raise DiskImageError(f"cannot detach {dev} (of {image}): {err}")


@contextlib.contextmanager
def mounted_device(device: str, *, options: str = "") -> Iterator[Path]:
    """Mount an ext4 ``device`` on a fresh temporary directory; sync and unmount on exit."""
    mnt = Path(tempfile.mkdtemp(prefix="rehost-mnt-"))
    try:
        run_tool(["mount", "-t", "ext4", *(["-o", options] if options else []), device, mnt])
        try:
            yield mnt
        finally:
            os.sync()
            for attempt in range(10):
                r = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
                if r.returncode == 0:
                    break
                time.sleep(0.1 * (attempt + 1))
            else:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def create_msdos_disk(path: Path, size_mib: int) -> None:
    """A sparse raw file of ``size_mib`` with an msdos label and one bootable partition from
    1 MiB to the end (what extlinux and ``partition_extent`` expect)."""
    with Path(path).open("wb") as f:
        f.truncate(size_mib * _MIB)
    run_tool(["parted", "-s", "-a", "optimal", path, "--", "mklabel", "msdos",
          "mkpart", "primary", "ext4", "1MiB", "100%", "set", "1", "boot", "on"])  # fmt: skip


def format_extlinux_ext4(part: str, *, label: str, inodes: int | None = None) -> None:
    """``mkfs.ext4`` with what extlinux can boot from: 4 KiB blocks, no ``64bit``,
    ``metadata_csum_seed`` or ``orphan_file``."""
    run_tool(["mkfs.ext4", "-q", "-F", "-b", "4096", *(["-N", str(inodes)] if inodes else []),
          "-m", "0", "-L", label,
          "-O", "^64bit,^metadata_csum_seed,^orphan_file",
          "-E", "lazy_itable_init=0,lazy_journal_init=0", part])  # fmt: skip


def write_syslinux_mbr(path: Path, mbr_bin: Path | None = None) -> None:
    """Write syslinux's MBR boot code (440 bytes, the partition table stays) into ``path``."""
    mbr = mbr_bin or first_existing(MBR_CANDIDATES, "syslinux mbr.bin (install syslinux-common)")
    with Path(path).open("r+b") as f:
        f.write(mbr.read_bytes()[:440])
        f.flush()
        os.fsync(f.fileno())


def create_gpt_disk(path: Path, size_mib: int, esp_mib: int) -> None:
    """A sparse raw file of ``size_mib`` with a GPT label: partition 1 (Linux) from 1 MiB up to
    the EFI system partition, partition 2 (ESP, ``esp_mib``) at the end. Partition 1 stays the
    root, so ``partition_extent``/``mounted_root`` and the guests' ``/dev/vda1`` hold."""
    with Path(path).open("wb") as f:
        f.truncate(size_mib * _MIB)
    run_tool(["sgdisk", "-n", f"1:2048:-{esp_mib}M", "-t", "1:8300", "-c", "1:root",
              "-n", "2:0:0", "-t", "2:ef00", "-c", "2:EFI system", str(path)])


def partition_extent(image: Path, number: int = 1) -> tuple[int, int]:
    """Byte offset and size of partition ``number`` (1-4 of an msdos label, or any of a GPT
    label behind its protective MBR)."""
    with image.open("rb") as f:
        head = f.read(1024)
        if len(head) < 1024 or head[510:512] != b"\x55\xaa":
            raise DiskImageError(f"{image} has no partition table (is it a raw image?)")
        if head[446 + 4] == 0xEE:  # protective MBR: the GPT header is at LBA 1
            if head[512:520] != b"EFI PART":
                raise DiskImageError(f"{image}: protective MBR without a GPT header")
            table = int.from_bytes(head[512 + 72:512 + 80], "little") * 512
            entry_size = int.from_bytes(head[512 + 84:512 + 88], "little")
            f.seek(table + (number - 1) * entry_size)
            entry = f.read(entry_size)
            first = int.from_bytes(entry[32:40], "little")
            last = int.from_bytes(entry[40:48], "little")
            if len(entry) < 48 or entry[:16] == bytes(16):
                raise DiskImageError(f"{image}: GPT partition {number} is empty")
            return first * 512, (last - first + 1) * 512
    if not 1 <= number <= 4:
        raise DiskImageError(f"{image}: an msdos label has partitions 1-4, not {number}")
    entry = head[446 + 16 * (number - 1):446 + 16 * number]
    start = int.from_bytes(entry[8:12], "little") * 512
    size = int.from_bytes(entry[12:16], "little") * 512
    if entry[4] == 0 or size == 0:
        raise DiskImageError(f"{image}: partition {number} is empty")
    return start, size


@contextlib.contextmanager
def mounted_root(image: Path, *, readonly: bool = False) -> Iterator[Path]:
    """Mount the image's ext4 root (partition 1) and yield the mount point.

    Uses a loop device with an offset rather than ``-P``: no partition node to wait for.
    Read-only mounts use a read-only loop device, so the image file is never touched (a fs
    needing journal recovery then fails to mount instead of being silently replayed).
    """
    require_root()
    image = Path(image)
    if not image.exists():
        raise DiskImageError(f"{image} does not exist")
    start, size = partition_extent(image)
    args = ["--offset", str(start), "--sizelimit", str(size)]
    if readonly:
        args.append("--read-only")
    with loop_device(image, *args) as dev, mounted_device(dev, options="ro" if readonly else "") as mnt:
        yield mnt
