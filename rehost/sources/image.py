"""Source ``image``: a machine made of disk image files (raw, qcow2, VMDK, VHD, VHDX), a VMware
export (OVA/OVF, one VM of a vApp) or a VMware VM folder (its ``.vmx``). Images are read
through qemu-nbd, read-only; a Hyper-V checkpoint chain (a differencing ``.avhdx`` on its
parents) through libvhdi and rehost's own NBD server (``rehost.disks.vhdx_chain``).

A VHDX whose log was not replayed (the VM was not shut down cleanly) is refused, unless the
source was added with ``replay_log_copy``: each cycle then reads a copy in the vault's cache
(``cache/images``) on which ``qemu-img check -r all`` replayed the log, made again when the file
changes. The user's file is never written.

An export is read again at every cycle (``rehost.disks.ova``): a re-exported OVA at the same
path has its disks at new offsets, perhaps with new sizes. A disk that grew or shrank is read
at its new size and the cycle says so; a disk that is gone is an error naming it. Compressed
or chunked export disks are unpacked once into the vault's cache (``cache/images``); blank
disks are zeros and cost nothing.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rehost.disks import DiskImage, open_reader, ova, probe, streams, vhdx_chain
from rehost.disks.firmware import detect as detect_firmware
from rehost.disks.formats import replay_on_copy
from rehost.errors import UsageError
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources import registry
from rehost.sources.base import Snapshot
from rehost.sources.image_hyperv import export_disks, is_export_folder
from rehost.sources.image_vmx import discover_vmx, safe_name
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec

log = logging.getLogger(__name__)

CONTAINER_SUFFIXES = {".ova", ".ovf", ".vmx"}


@dataclass(frozen=True)
class ImageConfig:
    """Disk image files on the rehost server: one machine per source."""

    paths: tuple[str, ...] = field(metadata={
        "help": "Disk images (raw, qcow2, vmdk, vhd, vhdx, or a Hyper-V checkpoint .avhdx with its "
                "parents next to it), in the machine's disk order, or one OVA/OVF export, or one "
                "VMware .vmx, or one Hyper-V export folder (its 'Virtual Hard Disks').",
        "argument": True,
        "host_path": True,
    })
    vm: str | None = field(default=None, metadata={
        "help": "For a vApp (an OVA/OVF of several VMs): import only this VM, by its id (default: "
                "every VM of the vApp, each as its own machine NAME-VM)."})
    firmware: str | None = field(default=None, metadata={
        "help": "bios or uefi: what boots the machine (default: from the disk — a GPT disk with an "
                "EFI system partition and no BIOS boot code in its MBR, such as a Hyper-V "
                "Generation 2 disk, is uefi — or what the OVF/VMX says)."})
    replay_log_copy: bool = field(default=False, metadata={
        "help": "A VHDX whose log was not replayed (the VM was not shut down cleanly): replay the "
                "log on a copy in the vault's cache and read the copy (your file is never "
                "written; default: refuse such a file)."})

    def __post_init__(self) -> None:
        if not self.paths:
            raise UsageError("give at least one disk image")
        if self.firmware is not None and self.firmware not in {f.value for f in Firmware}:
            raise UsageError(f"--firmware {self.firmware}: bios or uefi")


def _container(paths: Sequence[str | Path]) -> Path | None:
    """The one OVA/OVF/VMX among ``paths``, None for plain images."""
    containers = [p for p in paths if Path(p).suffix.lower() in CONTAINER_SUFFIXES]
    if not containers:
        return None
    if len(paths) != 1:
        raise UsageError("an OVA/OVF/VMX describes the whole machine: give it alone, without other disks")
    return Path(paths[0])


def vapp_members(paths: Sequence[str | Path]) -> list[str]:
    """The VM ids of a vApp export given alone; [] for anything else (one machine, images)."""
    path = _container(paths)
    if path is None or path.suffix.lower() == ".vmx":
        return []
    env = ova.envelope(path)
    return [s.id for s in env.systems] if len(env.systems) > 1 else []


def vapp_name(path: str | Path) -> str:
    """The vApp's id in its descriptor (the file's stem if it has none)."""
    return ova.envelope(Path(path)).vapp or Path(path).stem


def member_name(base: str, vm: str) -> str:
    """``NAME-VM`` as a machine name: characters a name may not have become '-'."""
    return safe_name(f"{base}-{vm}")


def _plain_disks(paths: Sequence[str], dirty_log: bool = False) -> list[DiskImage]:
    images = [probe(Path(p).absolute(), dirty_log=dirty_log) for p in paths]
    seen: set[Path] = set()
    for img in images:
        if img.path.resolve() in seen:
            raise UsageError(f"{img.path} is given twice")
        seen.add(img.path.resolve())
    return images


def discover(name: str, config: ImageConfig) -> MachineSpec:
    """The machine the files make up. An OVF descriptor or a .vmx also gives its name (when
    ``name`` is empty), CPUs, memory, NICs, guest OS and firmware; bare images give only disks."""
    settings: dict[str, Any] = {"paths": list(config.paths)}
    if len(config.paths) == 1 and is_export_folder(Path(config.paths[0])):
        # a Hyper-V export folder: its disks (the newest checkpoint of each chain), its name
        folder = Path(config.paths[0])
        found = tuple(str(p) for p in export_disks(folder))
        return discover(name or safe_name(folder.absolute().name),
                        ImageConfig(found, config.vm, config.firmware, config.replay_log_copy))
    path = _container(config.paths)
    if path is not None and path.suffix.lower() == ".vmx":
        return _firmware(discover_vmx(name, path, settings), config)
    if path is None:
        if config.vm:
            raise UsageError("--vm picks a VM of an OVA/OVF vApp; these are plain disk images")
        if config.replay_log_copy:
            settings["replay_log_copy"] = True
        images = _plain_disks(config.paths, config.replay_log_copy)
        disks = tuple(
            DiskSpec(index=i, size=img.virtual_size, ref=str(img.path.absolute()), format=img.format,
                     offset=img.offset, length=img.length)
            for i, img in enumerate(images))
        detected = None if config.firmware else detect_firmware(images[0])
        spec = MachineSpec(name=name, disks=disks, settings=settings, firmware=detected or Firmware.BIOS)
        return _firmware(spec, config)
    if config.replay_log_copy:
        raise UsageError("--replay-log-copy is for VHDX image files, not an OVA/OVF/VMX")
    machine = ova.read(path, config.vm)
    if config.vm:
        settings["vm"] = machine.system.id
    if path.suffix.lower() == ".ova":
        # each cycle finds the members again by their OVF disk ids (a re-export moves them)
        settings["disk_ids"] = [d.disk_id for d in machine.disks]
    if machine.system.startup is not None:
        settings["startup"] = machine.system.startup.to_json()
    hw = machine.hardware
    default = MachineSpec(name="")
    return _firmware(MachineSpec(
        name=name or safe_name(machine.name), settings=settings,
        disks=tuple(_disk_spec(i, d, path) for i, d in enumerate(machine.disks)),
        firmware=Firmware(hw.firmware) if hw.firmware else default.firmware,
        cpus=hw.cpus or default.cpus, memory_mib=hw.memory_mib or default.memory_mib,
        nics=tuple(NicSpec(mac=mac, network=network) for network, mac in hw.nics),
        guest_os=hw.guest_os,
    ), config)


def _firmware(spec: MachineSpec, config: ImageConfig) -> MachineSpec:
    """``--firmware`` given: it wins over the disk and the description."""
    return replace(spec, firmware=Firmware(config.firmware)) if config.firmware else spec


def _disk_spec(index: int, disk: ova.ExportDisk, container: Path) -> DiskSpec:
    if disk.image is not None:
        img = disk.image
        return DiskSpec(index=index, size=img.virtual_size, ref=str(img.path.absolute()),
                        format=img.format, offset=img.offset, length=img.length)
    return DiskSpec(index=index, size=disk.size, ref=f"{container.absolute()}#{disk.disk_id}",
                    format=disk.label)


def image_of(disk: DiskSpec) -> DiskImage:
    return DiskImage(Path(disk.ref), disk.format, disk.size, disk.offset, disk.length)


class ImageSource:
    """Reads image files that nothing writes to while a cycle runs (an exported VM).

    ``cache_dir`` holds unpacked compressed/chunked export disks between cycles (the vault's
    ``cache/images``); without one they are unpacked into a temporary folder per cycle."""

    kind = "image"

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        notes = ["image files have no guest to freeze: crash-consistent"] if app_consistent else []
        with ExitStack() as stack:
            export = _export_path(machine)
            if export is not None:
                disks = self._export_disks(machine, export, parent, notes, stack)
            else:
                disks = []
                for disk in machine.disks:
                    img = image_of(disk)
                    if not img.path.is_file():
                        raise UsageError(f"disk {disk.index} of {machine.name}: {img.path} no longer exists")
                    if machine.settings.get("replay_log_copy"):
                        img = self._replayed(machine, disk.index, img, notes, stack)
                    disks.append((disk.index, stack.enter_context(open_reader(img))))
            # Files at rest are one instant; if a hypervisor still writes them, use source qemu.
            yield Snapshot(disks, Consistency.CRASH, metadata={"kind": self.kind}, notes=notes)

    def _export_disks(self, machine: MachineSpec, path: Path, parent: RecoveryPoint | None,
                      notes: list[str], stack: ExitStack) -> list[tuple[int, ReadableDisk]]:
        """Read the export again and open its disks as it is now, saying what changed."""
        current = ova.read(path, machine.settings.get("vm"))
        now = _match_disks(machine, current, path)
        notes += _shape_changes(machine, current, now, path, parent)
        disks: list[tuple[int, ReadableDisk]] = []
        for spec in machine.disks:
            disk = now[spec.index]
            if disk.kind == "blank":
                disks.append((spec.index, streams.ZeroDisk(disk.size, f"{path} {disk.disk_id}")))
                continue
            image = disk.image or self._unpacked(machine, spec.index, disk, path, notes, stack)
            disks.append((spec.index, stack.enter_context(open_reader(image))))
        return disks

    def prepare(self, machine: MachineSpec, progress: streams.Progress | None = None) -> list[str]:
        """Unpack the machine's compressed or chunked export disks into the cache now (at
        registration, where a progress bar can show it) rather than in its first cycle."""
        path = _export_path(machine)
        if path is None or self.cache_dir is None:
            return []
        current = ova.read(path, machine.settings.get("vm"))
        now = _match_disks(machine, current, path)
        notes: list[str] = []
        with ExitStack() as stack:
            for spec in machine.disks:
                if now[spec.index].kind == "packed":
                    self._unpacked(machine, spec.index, now[spec.index], path, notes, stack, progress)
        return notes

    def _unpacked(self, machine: MachineSpec, index: int, disk: ova.ExportDisk, path: Path,
                  notes: list[str], stack: ExitStack, progress: streams.Progress | None = None,
                  ) -> DiskImage:
        """The packed disk as a file QEMU can open: unpacked once into the cache."""
        cache = self.cache_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rehost-unpack-")))
        prefix = f"{_cache_prefix(machine)}{index}-"
        dest = cache / f"{prefix}{streams.cache_key(disk.pieces, disk.compression)}.{disk.format}"
        if not dest.exists():
            log.info("unpacking %s (%s) of %s into %s", disk.href, disk.label, path, dest)
            streams.unpack(disk.pieces, disk.compression, dest, f"{path}: disk {disk.href!r}", progress)
            for old in cache.glob(f"{prefix}*"):
                if old != dest:
                    old.unlink(missing_ok=True)  # an earlier export's copy
            notes.append(f"disk {index} ({disk.href}, {disk.label}) unpacked into the cache "
                         f"({dest.stat().st_blocks * 512 >> 20} MiB on disk)")
        return probe(dest, disk.format if disk.format != "raw" else None)

    def _replayed(self, machine: MachineSpec, index: int, img: DiskImage, notes: list[str],
                  stack: ExitStack) -> DiskImage:
        """``img`` itself when its log is clean; else a copy in the cache with the log replayed
        (made once per version of the file, an older copy removed)."""
        if img.format != "vhdx" or not vhdx_chain.read_vhdx(img.path).dirty:
            return img
        cache = self.cache_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rehost-replay-")))
        prefix = f"{_cache_prefix(machine)}{index}-"
        key = streams.cache_key([streams.Piece(img.path, 0, img.path.stat().st_size)], "replay")
        dest = cache / f"{prefix}{key}.vhdx"
        if not dest.exists():
            log.info("replaying the log of %s on a copy, %s", img.path, dest)
            for old in cache.glob(f"{prefix}*"):
                old.unlink(missing_ok=True)  # the copy of an earlier version of the file
            notes.append(f"disk {index} ({img.path}): {vhdx_chain.DIRTY_LOG}; the log was replayed "
                         f"on a copy in the cache, {dest} (the file itself is untouched)")
        return replay_on_copy(img, dest)

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        return "image files have no running machine to shut down"

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        raise UsageError(self.can_shutdown(machine) or "")

    def release(self, machine: MachineSpec) -> str | None:
        return None

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        """Replication has ended: the unpacked copies of the machine's export disks go."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return None
        copies = list(self.cache_dir.glob(f"{_cache_prefix(machine)}*"))
        for copy in copies:
            copy.unlink(missing_ok=True)
        return f"{len(copies)} unpacked export disk(s) removed from the cache" if copies else None


def _cache_prefix(machine: MachineSpec) -> str:
    return f"{machine.id or member_name('m', machine.name)}-"


def _export_path(machine: MachineSpec) -> Path | None:
    paths = machine.settings.get("paths") or []
    if len(paths) == 1 and Path(paths[0]).suffix.lower() in (".ova", ".ovf"):
        return Path(paths[0])
    return None


def _match_disks(machine: MachineSpec, current: ova.ExportMachine, path: Path) -> dict[int, ova.ExportDisk]:
    """The export's disks now, by the machine's disk index. A registered disk is found again
    by what names it: its OVF disk id (an OVA member, a blank or packed disk) or its file (a
    disk next to a bare .ovf); by position for machines registered before either was kept.
    A disk that is gone is an error naming it: its points cannot go on."""
    ids: list[str] = list(machine.settings.get("disk_ids") or [])
    by_id = {d.disk_id: d for d in current.disks}
    by_file = {str(d.image.path.absolute()): d for d in current.disks if d.image is not None}
    found: dict[int, ova.ExportDisk] = {}
    gone = []
    for spec in machine.disks:
        key = _disk_key(spec, ids, len(machine.disks))
        if key is None:
            disk = current.disks[spec.index] if spec.index < len(current.disks) else None
        else:
            disk = by_id.get(key) or by_file.get(key)
        if disk is None:
            gone.append(f"disk {spec.index} ({key or 'by position'})")
        else:
            found[spec.index] = disk
    if gone:
        raise UsageError(
            f"{path} changed shape: VM {current.system.id!r} now has {len(current.disks)} disk(s), "
            f"{machine.name} was registered with {len(machine.disks)}; missing: {', '.join(gone)}. "
            "Register the new export as a new machine")
    return found


def _disk_key(spec: DiskSpec, ids: list[str], count: int) -> str | None:
    """The OVF disk id or the file that names a registered export disk; None: go by position."""
    if "#" in spec.ref:
        return spec.ref.rsplit("#", 1)[1]
    if len(ids) == count:
        return ids[spec.index]
    if spec.offset == 0 and spec.length is None and not spec.ref.lower().endswith(".ova"):
        return spec.ref
    return None


def _shape_changes(machine: MachineSpec, current: ova.ExportMachine, now: dict[int, ova.ExportDisk],
                   path: Path, parent: RecoveryPoint | None) -> list[str]:
    """What differs between the export now and the disks this machine had (at its last point,
    else at registration)."""
    before = {d.index: d.size for d in (parent.disks if parent is not None else machine.disks)}
    notes = []
    for spec in machine.disks:
        size, was = now[spec.index].size, before.get(spec.index, spec.size)
        if size != was:
            verb = "grew" if size > was else "shrank"
            notes.append(f"{path}: disk {spec.index} ({now[spec.index].href or 'blank'}) "
                         f"{verb} from {was} to {size} bytes since the last point; this point has "
                         "the new size")
    if len(current.disks) > len(machine.disks):
        extra = len(current.disks) - len(machine.disks)
        notes.append(f"{path}: the export now has {extra} more disk(s) than {machine.name} was registered "
                     "with; they are not replicated (register the export again to include them)")
    return notes


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> ImageSource:
    # The vault's folder holds the agents' CA; its cache sits next to it.
    return ImageSource(context.agents_dir.parent / "cache" / "images")


PLUGIN = registry.register(registry.SourcePlugin(
    kind="image",
    summary="A machine made of disk image files (a VMware or Hyper-V export, an OVA/OVF, a .vmx).",
    config=ImageConfig,
    capabilities=registry.Capabilities(change_tracking="hash-diff", disks_are_files=True),
    discover=discover,
    open=_open,
    name_hint="'-' takes the name inside an OVA/OVF/VMX, or a Hyper-V export folder's name",
))
