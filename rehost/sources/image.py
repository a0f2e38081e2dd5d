"""Source ``image``: a machine made of disk image files (raw, qcow2, VMDK, VHD, VHDX) or a
VMware export (OVA/OVF). Images are read through qemu-nbd, read-only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rehost.disks import DiskImage, open_disk, ovf, probe
from rehost.errors import UsageError
from rehost.replication.cycle import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources.base import Snapshot
from rehost.vault.models import DiskRow, MachineRow

CONTAINER_SUFFIXES = {".ova", ".ovf"}


def discover(paths: Sequence[Path]) -> tuple[str | None, list[DiskImage]]:
    """The disks the given files make up, and a machine name if a descriptor gives one.

    One OVA/OVF describes a whole machine; otherwise every path is one disk image.
    """
    if not paths:
        raise UsageError("give at least one disk image")
    containers = [p for p in paths if Path(p).suffix.lower() in CONTAINER_SUFFIXES]
    if containers:
        if len(paths) != 1:
            raise UsageError("an OVA/OVF describes the whole machine: give it alone, without other disks")
        machine = ovf.parse(Path(paths[0]))
        return machine.name, list(machine.disks)
    images = [probe(Path(p).absolute()) for p in paths]
    seen: set[Path] = set()
    for img in images:
        if img.path.resolve() in seen:
            raise UsageError(f"{img.path} is given twice")
        seen.add(img.path.resolve())
    return None, images


def image_of(row: DiskRow) -> DiskImage:
    return DiskImage(Path(row.path), row.format, row.size, row.offset, row.length)


class ImageSource:
    """Reads image files that nothing writes to while a cycle runs (an exported VM)."""

    kind = "image"

    @contextmanager
    def snapshot(
        self, machine: MachineRow, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        notes = ["image files have no guest to freeze: crash-consistent"] if app_consistent else []
        with ExitStack() as stack:
            disks: list[tuple[int, ReadableDisk]] = []
            for row in machine.disks:
                img = image_of(row)
                if not img.path.is_file():
                    raise UsageError(f"disk {row.index} of {machine.name}: {img.path} no longer exists")
                disks.append((row.index, stack.enter_context(open_disk(img))))
            # Files at rest are one instant; if a hypervisor still writes them, use source qemu.
            yield Snapshot(disks, Consistency.CRASH, metadata={"kind": self.kind}, notes=notes)

    def can_shutdown(self, machine: MachineRow) -> str | None:
        return "image files have no running machine to shut down"

    def shutdown(self, machine: MachineRow, timeout: float) -> str:
        raise UsageError(self.can_shutdown(machine) or "")

    def release(self, machine: MachineRow) -> str | None:
        return None

    def stop_tracking(self, machine: MachineRow) -> str | None:
        return None
