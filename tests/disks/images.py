"""Test disk images: a sparse raw master, converted to every format rehost reads.

Reusable by any test that needs "the same disk in format X" (replication, failover).
Everything is made with the real ``qemu-img``; nothing is mocked.

API
---
``make_master(path, size=64 MiB, *, seed=0) -> list[tuple[int, int]]``
    Write a sparse raw image of ``size`` bytes: random data in a few regions (some not
    cluster-aligned), holes elsewhere. Returns the data regions as ``(offset, length)``.

``make_image(raw_master, fmt, dest, *, subformat=None, backing=None) -> DiskImage``
    Convert ``raw_master`` to ``fmt`` (raw, qcow2, vmdk, vpc, vhdx) at ``dest`` and
    probe it. ``subformat`` is QEMU's (vmdk: monolithicSparse, streamOptimized; vpc:
    fixed, dynamic). VHDs are made with ``force_size`` so the virtual size equals the
    master's. With ``backing`` (qcow2 only; an existing qcow2), ``dest`` becomes an
    overlay on it holding only what differs from it: the guest view is still the master.

``make_backing_base(raw_master, dest, *, seed=1) -> Path``
    A qcow2 that differs from the master in some regions (other data where the master
    has data, data where the master has a hole): a base for ``make_image(backing=...)``.

``VARIANTS: dict[str, tuple[str, str | None]]`` and
``make_variant(raw_master, name, folder) -> DiskImage``
    Named formats (``raw``, ``qcow2``, ``qcow2-backing``, ``vmdk-sparse``, ``vmdk-stream``,
    ``vpc-fixed``, ``vpc-dynamic``, ``vhdx``), made in ``folder``.

``read_through_extents(disk) -> tuple[bytes, int]``
    The whole disk rebuilt from its extents (data read, zeros for zero extents), and how
    many bytes were actually read.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from rehost.disks import DiskImage, NbdDisk, probe

MiB = 1 << 20
MASTER_SIZE = 64 * MiB

#: (offset, length) of the master's data regions; the rest is holes. Some start and end
#: off 64 KiB cluster boundaries, one crosses a 2 MiB VHD block boundary.
MASTER_REGIONS = (
    (0, 64 * 1024),  # a boot sector area
    (1 * MiB + 4096, 300 * 1024),  # not cluster-aligned
    (2 * MiB - 512 * 1024, 1 * MiB),  # across a 2 MiB VHD block boundary
    (17 * MiB, 2 * MiB),
    (40 * MiB + 12288, 7 * 4096),
    (MASTER_SIZE - 1 * MiB, 1 * MiB),  # the last MiB
)

VARIANTS: dict[str, tuple[str, str | None]] = {
    "raw": ("raw", None),
    "qcow2": ("qcow2", None),
    "qcow2-backing": ("qcow2", None),
    "vmdk-sparse": ("vmdk", "monolithicSparse"),
    "vmdk-stream": ("vmdk", "streamOptimized"),
    "vpc-fixed": ("vpc", "fixed"),
    "vpc-dynamic": ("vpc", "dynamic"),
    "vhdx": ("vhdx", None),
}

_EXTENSIONS = {"raw": ".raw", "qcow2": ".qcow2", "vmdk": ".vmdk", "vpc": ".vhd", "vhdx": ".vhdx"}


def run(*cmd: str | Path) -> None:
    """Run a command; on failure show its output in the assertion."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr or proc.stdout}"


def make_master(path: Path, size: int = MASTER_SIZE, *, seed: int = 0) -> list[tuple[int, int]]:
    """A sparse raw image with random data in MASTER_REGIONS (scaled into ``size``)."""
    rng = random.Random(seed)
    regions = [(off, n) for off, n in MASTER_REGIONS if off + n <= size]
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in regions:
            f.seek(off)
            f.write(rng.randbytes(n))
    return regions


def make_backing_base(raw_master: Path, dest: Path, *, seed: int = 1) -> Path:
    """A qcow2 base that differs from the master, so an overlay has real work to do."""
    rng = random.Random(seed)
    base_raw = dest.with_suffix(".base-src.raw")
    size = raw_master.stat().st_size
    with open(raw_master, "rb") as src, open(base_raw, "wb") as f:
        f.truncate(size)
        for i, (off, n) in enumerate(r for r in MASTER_REGIONS if r[0] + r[1] <= size):
            src.seek(off)
            data = src.read(n)
            f.seek(off)
            # Even regions: the base already has the master's data (the overlay holds
            # nothing there). Odd regions: older data the overlay overwrites.
            f.write(data if i % 2 == 0 else rng.randbytes(n))
        # Data in the base where the master has a hole: the overlay must zero it.
        f.seek(30 * MiB)
        f.write(rng.randbytes(256 * 1024))
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", base_raw, dest)
    base_raw.unlink()
    return dest


def make_image(
    raw_master: Path,
    fmt: str,
    dest: Path,
    *,
    subformat: str | None = None,
    backing: Path | None = None,
) -> DiskImage:
    """Convert the raw master into ``fmt`` at ``dest`` (see the module docstring)."""
    if backing is not None:
        if fmt != "qcow2":
            raise ValueError("backing files are only made for qcow2")
        _make_overlay(raw_master, dest, backing)
        return probe(dest)
    options = []
    if subformat:
        options.append(f"subformat={subformat}")
    if fmt == "vpc":
        options.append("force_size=on")
    cmd: list[str | Path] = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt]
    if options:
        cmd += ["-o", ",".join(options)]
    run(*cmd, raw_master, dest)
    # qemu probes a fixed VHD as raw; rehost's probe finds its footer.
    return probe(dest)


def _make_overlay(raw_master: Path, dest: Path, backing: Path) -> None:
    """An overlay on ``backing`` whose guest view is the master, holding only the diff.

    Made as: an empty overlay on a qcow2 copy of the master, then a safe ``qemu-img
    rebase`` onto ``backing``, which copies into the overlay exactly the clusters where
    the master and ``backing`` differ.
    """
    full = dest.with_suffix(".full.qcow2")
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw_master, full)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", full.name, "-F", "qcow2", dest)
    rel = os.path.relpath(backing, dest.parent)
    run("qemu-img", "rebase", "-q", "-f", "qcow2", "-b", rel, "-F", "qcow2", dest)
    full.unlink()


def make_variant(raw_master: Path, name: str, folder: Path) -> DiskImage:
    """One of VARIANTS, made from the master in ``folder``."""
    fmt, subformat = VARIANTS[name]
    dest = folder / f"{name}{_EXTENSIONS[fmt]}"
    if name == "qcow2-backing":
        base = make_backing_base(raw_master, folder / f"{name}-base.qcow2")
        return make_image(raw_master, fmt, dest, backing=base)
    return make_image(raw_master, fmt, dest, subformat=subformat)


def read_through_extents(disk: NbdDisk) -> tuple[bytes, int]:
    """Rebuild the disk from its extents, reading only data extents; count bytes read."""
    out = bytearray(disk.size)
    view = memoryview(out)
    read = 0
    for ext in disk.extents():
        if not ext.zero:  # zero extents are already zeros in ``out``
            disk.readinto(ext.start, view[ext.start : ext.end])
            read += ext.length
    return bytes(out), read
