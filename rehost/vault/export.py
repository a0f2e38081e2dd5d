"""Giving a recovery point back as a disk image file, byte for byte."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from rehost.disks import DiskImage, open_disk
from rehost.errors import DiskError, NotFound, UsageError
from rehost.jobs import leases
from rehost.repository.restore import iter_chunks
from rehost.vault.inventory import get_machine
from rehost.vault.protection import find_point
from rehost.vault.vault import Vault

FORMATS = ("raw", "qcow2")


def export_disk(
    vault: Vault, name: str, point_spec: str, disk: int, output: Path, fmt: str = "raw",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write one disk of a point to ``output``, which must not exist yet.

    The file is written under a temporary name and linked into place only when complete
    and verified (every blob is checked against its keyed hash while reading), so a failed
    or interrupted export never leaves a plausible-looking wrong image.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (use raw or qcow2)")
    output = Path(output)
    if output.exists() or output.is_symlink():
        raise UsageError(f"{output} already exists; rehost never overwrites a file")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} is not a folder")
    machine = get_machine(vault, name)
    point = find_point(vault, name, point_spec)
    sizes = {d.index: d.size for d in point.disks}
    if disk not in sizes:
        raise NotFound(f"{machine.name} has no disk {disk} (disks: {', '.join(map(str, sorted(sizes)))})")
    size = sizes[disk]
    tmp = output.with_name(f".{output.name}.rehost-partial")
    tmp.unlink(missing_ok=True)
    try:
        with leases.reading(vault, [point.id], "export"):
            if fmt == "raw":
                _write_raw(vault, point, disk, tmp, size, progress)
            else:
                _write_qcow2(vault, point, disk, tmp, size, progress)
        os.link(tmp, output)  # fails rather than replace a file that appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _write_raw(vault, point, disk, path: Path, size: int, progress) -> None:  # type: ignore[no-untyped-def]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)  # sparse: zero chunks are never written
        for off, data in iter_chunks(vault.repo, point, disk):
            if data is not None:
                os.pwrite(fd, data, off)
            if progress:
                progress(min(off + (len(data) if data else 1 << 20), size), size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_qcow2(vault, point, disk, path: Path, size: int, progress) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise DiskError(f"qemu-img create failed: {r.stderr.strip()}")
    with open_disk(DiskImage(path, "qcow2", size), writable=True) as out:
        for off, data in iter_chunks(vault.repo, point, disk):
            if data is not None:
                out.pwrite(off, data)
            if progress:
                progress(min(off + (1 << 20), size), size)
