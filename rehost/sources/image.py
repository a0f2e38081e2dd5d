"""Source ``image``: a machine made of disk image files (raw, qcow2, VMDK, VHD, VHDX) or a
VMware export (OVA/OVF). Images are read through qemu-nbd, read-only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehost.disks import DiskImage, open_disk, ovf, probe
from rehost.errors import UsageError
from rehost.replication.cycle import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources import registry
from rehost.sources.base import Snapshot
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec

CONTAINER_SUFFIXES = {".ova", ".ovf"}


@dataclass(frozen=True)
class ImageConfig:
    """Disk image files on the rehost server: one machine per source."""

    paths: tuple[str, ...] = field(metadata={
        "help": "Disk images (raw, qcow2, vmdk, vhd, vhdx), in the machine's disk order, or one "
                "OVA/OVF export.",
        "argument": True,
    })

    def __post_init__(self) -> None:
        if not self.paths:
            raise UsageError("give at least one disk image")


def find_disks(paths: Sequence[Path]) -> tuple[ovf.OvfMachine | None, list[DiskImage]]:
    """The disks the given files make up, and the OVF machine if a descriptor describes them.

    One OVA/OVF describes a whole machine; otherwise every path is one disk image.
    """
    if not paths:
        raise UsageError("give at least one disk image")
    containers = [p for p in paths if Path(p).suffix.lower() in CONTAINER_SUFFIXES]
    if containers:
        if len(paths) != 1:
            raise UsageError("an OVA/OVF describes the whole machine: give it alone, without other disks")
        machine = ovf.parse(Path(paths[0]))
        return machine, list(machine.disks)
    images = [probe(Path(p).absolute()) for p in paths]
    seen: set[Path] = set()
    for img in images:
        if img.path.resolve() in seen:
            raise UsageError(f"{img.path} is given twice")
        seen.add(img.path.resolve())
    return None, images


def discover(name: str, config: ImageConfig) -> MachineSpec:
    """The machine the files make up. An OVF descriptor also gives its name (when ``name`` is
    empty), CPUs, memory, NICs, guest OS and firmware; bare images give only disks."""
    described, images = find_disks([Path(p) for p in config.paths])
    disks = tuple(
        DiskSpec(index=i, size=img.virtual_size, ref=str(img.path.absolute()), format=img.format,
                 offset=img.offset, length=img.length)
        for i, img in enumerate(images)
    )
    settings = {"paths": list(config.paths)}
    if described is None:
        return MachineSpec(name=name, disks=disks, settings=settings)
    hw = described.hardware
    default = MachineSpec(name="")
    return MachineSpec(
        name=name or described.name, disks=disks, settings=settings,
        firmware=Firmware(hw.firmware) if hw.firmware else default.firmware,
        cpus=hw.cpus or default.cpus, memory_mib=hw.memory_mib or default.memory_mib,
        nics=tuple(NicSpec(mac=mac, network=network) for network, mac in hw.nics),
        guest_os=hw.guest_os,
    )


def image_of(disk: DiskSpec) -> DiskImage:
    return DiskImage(Path(disk.ref), disk.format, disk.size, disk.offset, disk.length)


class ImageSource:
    """Reads image files that nothing writes to while a cycle runs (an exported VM)."""

    kind = "image"

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        notes = ["image files have no guest to freeze: crash-consistent"] if app_consistent else []
        with ExitStack() as stack:
            disks: list[tuple[int, ReadableDisk]] = []
            for disk in machine.disks:
                img = image_of(disk)
                if not img.path.is_file():
                    raise UsageError(f"disk {disk.index} of {machine.name}: {img.path} no longer exists")
                disks.append((disk.index, stack.enter_context(open_disk(img))))
            # Files at rest are one instant; if a hypervisor still writes them, use source qemu.
            yield Snapshot(disks, Consistency.CRASH, metadata={"kind": self.kind}, notes=notes)

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        return "image files have no running machine to shut down"

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        raise UsageError(self.can_shutdown(machine) or "")

    def release(self, machine: MachineSpec) -> str | None:
        return None

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        return None


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> ImageSource:
    return ImageSource()


PLUGIN = registry.register(registry.SourcePlugin(
    kind="image",
    summary="A machine made of disk image files (a VMware or Hyper-V export, an OVA/OVF).",
    config=ImageConfig,
    capabilities=registry.Capabilities(change_tracking="hash-diff"),
    discover=discover,
    open=_open,
    name_hint="'-' takes the name inside an OVA/OVF",
))
