"""A (test) failover's fix-ups: the point's disks as overlays in the vault, changed there.

Why overlays: the fix-ups (``rehost.guest.fixups``) must change the copy on the target and
never the source or the recovery point. Each disk of the point gets a qcow2 overlay in
``<vault>/fixups/<vm>/`` whose backing file is the point's NBD export (the servers instant
recovery runs, named after the machine on the target, so they hold a reading lease and the
failover reuses them); libguestfs writes into the overlays only. The target is then handed
the overlays instead of the point: a target that boots from NBD makes its own overlay on top
(``PointDisk.format`` qcow2) and hydration copies the whole chain in; a target that stages
disks uploads the overlay's data (``staged_data``), as a disk of its own, never as the
target's replica of the point.

The overlays are derived: a fix-up step cut short makes them again from the point. They go
when the machine no longer needs them (after hydration, staging, or a test cleanup).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from rehost.disks.formats import DiskImage
from rehost.disks.nbd_disk import NbdDisk
from rehost.disks.nbd_server import QemuNbdServer
from rehost.errors import DiskError
from rehost.guest.fixups import FixUpResult, apply_fixups
from rehost.repository.manifest import RecoveryPoint
from rehost.targets.base import Extent, PointDisk
from rehost.vault import instant
from rehost.vault.models import MachineRow
from rehost.vault.vault import Vault

#: what a staged disk's data is read in
CHUNK = 4 << 20
_DONE = "fixups.json"


def folder(vault: Vault, vm: str) -> Path:
    return vault.root / "fixups" / vm


def _overlay(vault: Vault, vm: str, index: int) -> Path:
    return folder(vault, vm) / f"disk{index}.qcow2"


def make_overlays(vault: Vault, machine: MachineRow, point: RecoveryPoint, vm: str) -> list[PointDisk]:
    """Fresh overlays of every disk of ``point`` (whatever a cut-short run left is dropped)."""
    served = sorted(instant.start_point_servers(vault, machine, point, vm), key=lambda d: d.index)
    d = folder(vault, vm)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    disks = []
    for disk in served:
        assert disk.uri is not None
        path = _overlay(vault, vm, disk.index)
        r = subprocess.run(["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", disk.uri, "-F", "raw",
                            str(path), str(disk.size)], capture_output=True, text=True)
        if r.returncode != 0:
            raise DiskError(f"cannot make the fix-up overlay of disk {disk.index}: {r.stderr.strip()}")
        disks.append(PointDisk(disk.index, disk.size, point.id, str(path), machine.name, "qcow2"))
    return disks


def fix_up(vault: Vault, machine: MachineRow, point: RecoveryPoint, vm: str, kind: str,
           names: Sequence[str]) -> FixUpResult:
    """Make the overlays and apply ``names`` to them for a target of ``kind``."""
    try:
        disks = make_overlays(vault, machine, point, vm)
        result = apply_fixups([str(d.uri) for d in disks], "qcow2", kind, names)
    except BaseException:  # nothing uses them yet: a resumed job makes them again
        instant.stop_point_servers(vault, vm)
        remove(vault, vm)
        raise
    (folder(vault, vm) / _DONE).write_text(json.dumps({"point": point.id, **result.to_json()}))
    return result


def fixed_disks(vault: Vault, point: RecoveryPoint, vm: str) -> list[PointDisk] | None:
    """The overlays the fix-up step finished for ``point`` (None: no fix-ups)."""
    try:
        done = json.loads((folder(vault, vm) / _DONE).read_text())
    except (OSError, ValueError):
        return None
    if done.get("point") != point.id:
        return None
    return [PointDisk(x.index, x.size, point.id, str(_overlay(vault, vm, x.index)), format="qcow2")
            for x in point.disks]


def staged_data(disk: PointDisk) -> Iterator[Extent]:
    """A fixed disk's data for ``Target.stage_disk``: (offset, length, bytes or None for
    zeros), read from the overlay through qemu-nbd (the point's blocks come through its
    backing file)."""
    assert disk.uri is not None
    with QemuNbdServer(DiskImage(Path(disk.uri), "qcow2", disk.size), shared=1) as server, \
            NbdDisk.connect(server.uri) as nbd:
        for e in nbd.extents():
            for off in range(e.start, e.end, CHUNK):
                n = min(CHUNK, e.end - off)
                yield off, n, None if e.zero else bytes(nbd.read(off, n))


def staged_point(point: RecoveryPoint) -> str:
    """What a fixed disk is tagged with on a staging target: not the point (a target keeping
    replicas would otherwise take its own copy of the unfixed point for it)."""
    return f"{point.id}+fixups"


def remove(vault: Vault, vm: str) -> None:
    shutil.rmtree(folder(vault, vm), ignore_errors=True)
