"""A Hyper-V export folder as an image source (``Export-VM``'s layout: ``Virtual Machines/``,
``Virtual Hard Disks/``, maybe ``Snapshots/``).

The disks are the files of ``Virtual Hard Disks/``. A VM with checkpoints has there its base
``.vhdx`` and one ``.avhdx`` per checkpoint, each the child of the one before: the machine's
disk is the newest end of each chain (a file no other file names as its parent; of several
branches from one base, the newest by modification time). The machine is named after the
folder. The files found are the machine's disks from then on: a checkpoint taken later makes
a new ``.avhdx`` that needs the folder registered again. ``.vmcx`` (the VM's configuration)
is an undocumented format and is not read: CPUs, memory and firmware keep their defaults.
"""

from __future__ import annotations

from pathlib import Path

from rehost.disks import vhdx_chain
from rehost.errors import UsageError

DISKS_FOLDER = "Virtual Hard Disks"
DISK_SUFFIXES = (".vhd", ".vhdx", ".avhdx")


def is_export_folder(path: Path) -> bool:
    return path.is_dir()


def export_disks(folder: Path) -> list[Path]:
    """The disk of each chain in ``folder``'s ``Virtual Hard Disks/``, ordered by base name."""
    where = folder / DISKS_FOLDER
    if not where.is_dir():
        raise UsageError(f"{folder}: a folder, but not a Hyper-V export (no {DISKS_FOLDER!r} "
                         "folder in it); give the disk image files instead")
    files = sorted(p.absolute() for p in where.iterdir()
                   if p.is_file() and p.suffix.lower() in DISK_SUFFIXES)
    if not files:
        raise UsageError(f"{where}: no .vhdx, .avhdx or .vhd files")
    parent_of: dict[Path, Path] = {}
    for f in files:
        if vhdx_chain.is_vhdx(f):
            info = vhdx_chain.read_vhdx(f)
            if info.has_parent:
                parent_of[f] = vhdx_chain.find_parent(info).absolute()
    parents = set(parent_of.values())
    newest: dict[Path, Path] = {}
    for leaf in (f for f in files if f not in parents):
        base = leaf
        while base in parent_of:
            base = parent_of[base]
        if base not in newest or leaf.stat().st_mtime_ns > newest[base].stat().st_mtime_ns:
            newest[base] = leaf
    return [newest[base] for base in sorted(newest)]
