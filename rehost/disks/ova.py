"""OVA and OVF packages: find the descriptor and where each disk's bytes are.

An ``.ova`` is a tar; a bare ``.ovf`` names files next to it. Each disk of a machine becomes
an ``ExportDisk``:

- ``image``: an uncompressed, whole disk file, read in place by QEMU (a ``DiskImage`` with the
  tar member's offset and size; nothing is unpacked);
- ``blank``: no file, ``ovf:capacity`` zeros;
- ``packed``: gzip-compressed and/or split in chunks. QEMU needs random access, so these are
  read as a stream (pieces in order, decompressed) once into a cache file
  (``rehost.disks.streams``).

A package is read again on every cycle (``read``): a re-exported OVA at the same path has its
members elsewhere, and a disk that grew has a new size.

File names from the descriptor are untrusted: nothing that climbs out of the export (``..``,
absolute paths, URLs), only regular tar members.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rehost.disks import ovf, streams
from rehost.disks.formats import DiskImage, probe
from rehost.disks.ovf import OvfDisk, OvfError, OvfSystem

#: chunk file names: ``disk.vmdk.000000000``, ``disk.vmdk.000000001``...
_CHUNK = ".{:09d}"
#: a disk split into more pieces than this is no export
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class ExportDisk:
    """One disk of an exported machine and where its bytes are."""

    disk_id: str
    kind: str  # image | blank | packed
    size: int
    #: the file name in the export ("" for a blank disk)
    href: str = ""
    #: kind image: the disk in place
    image: DiskImage | None = None
    #: kind packed: the pieces in order, their compression and the format inside
    pieces: tuple[streams.Piece, ...] = ()
    compression: str = ""
    format: str = "raw"

    @property
    def label(self) -> str:
        """What ``DiskRow.format`` shows (16 characters at most)."""
        if self.kind == "blank":
            return "zero"
        if self.kind == "image":
            assert self.image is not None
            return self.image.format
        extra = ("+gz" if self.compression else "") + ("+chunks" if len(self.pieces) > 1 else "")
        return f"{self.format}{extra}"

    def describe(self) -> str:
        return f"{self.disk_id} ({self.href or 'blank'})"


@dataclass(frozen=True)
class ExportMachine:
    """One machine of an export: the descriptor's view plus where its disks are."""

    name: str
    system: OvfSystem
    disks: list[ExportDisk] = field(default_factory=list)

    @property
    def hardware(self) -> ovf.OvfHardware:
        return self.system.hardware


def envelope(path: Path) -> ovf.Envelope:
    """Just the descriptor of an ``.ova``/``.ovf`` (which machines, their disks)."""
    return _open(Path(path))[1]


def read(path: Path, vm: str | None = None) -> ExportMachine:
    """The machine ``vm`` (the only one if None) of the export at ``path``, with its disks
    located and sized; raise OvfError (a UsageError) saying what is wrong."""
    path = Path(path)
    members, env, where = _open(path)
    system = env.system(vm, where)
    disks = [_locate(path, members, d, where) for d in system.disks]
    name = system.id or system.name or path.stem
    return ExportMachine(name, system, disks)


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


def _open(path: Path) -> tuple[dict[str, _Member] | None, ovf.Envelope, str]:
    """The OVA's members (None for a bare .ovf), the descriptor, and its name for messages."""
    if not path.exists():
        raise OvfError(f"{path}: no such file")
    if path.is_dir():
        raise OvfError(f"{path}: is a directory, not an OVA or OVF file")
    if path.suffix.lower() == ".ovf":
        if path.stat().st_size > ovf.MAX_DESCRIPTOR:
            raise OvfError(f"{path}: too large for an OVF descriptor")
        return None, ovf.parse_descriptor(path.read_bytes(), str(path)), str(path)
    opened = False
    try:
        # An OVA is a plain tar. Not tarfile.is_tarfile: it tries every compression and lets
        # EOFError out of a cut gzip header (found by the fuzzer).
        with tarfile.open(path, mode="r:") as tar:
            opened = True
            infos = tar.getmembers()
            descriptors = [m for m in infos if m.name.removeprefix("./").lower().endswith(".ovf")
                           and "/" not in m.name.removeprefix("./")]
            if len(descriptors) != 1:
                found = "no" if not descriptors else f"{len(descriptors)}"
                raise OvfError(f"{path}: has {found} OVF descriptors; an OVA needs exactly one")
            desc = descriptors[0]
            if not desc.isfile() or desc.size > ovf.MAX_DESCRIPTOR:
                raise OvfError(f"{path}: the OVF descriptor is not a regular file of sane size")
            stream = tar.extractfile(desc)
            assert stream is not None  # a regular member always has a stream
            text = stream.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        if not opened:
            raise OvfError(f"{path}: not an OVA (not a tar archive)") from None
        raise OvfError(f"{path}: damaged OVA ({e})") from None
    members = {m.name.removeprefix("./"): _Member(m.offset_data, m.size) for m in infos if m.isfile()}
    where = f"{path}:{desc.name.removeprefix('./')}"
    return members, ovf.parse_descriptor(text, where), where


def _locate(path: Path, members: dict[str, _Member] | None, disk: OvfDisk, where: str) -> ExportDisk:
    if disk.file is None:
        assert disk.capacity is not None  # the parser refuses a blank disk without one
        return ExportDisk(disk.disk_id, "blank", disk.capacity)
    file = disk.file
    href = str(safe_href(file.href, path))
    names = [href] if file.chunk_size is None else _chunk_names(href, path, members)
    pieces = tuple(_piece(path, members, n, file.href) for n in names)
    if not file.compression and len(pieces) == 1:
        p = pieces[0]
        if members is None:
            image = probe(p.path, disk.format)
        else:
            # QEMU's raw offset/size must be whole sectors; tar pads members to 512 bytes.
            length = -(-p.length // 512) * 512
            if p.offset + length > path.stat().st_size:
                raise OvfError(f"{path}: disk member {file.href!r} is truncated")
            image = probe(path, disk.format, offset=p.offset, length=length)
        return ExportDisk(disk.disk_id, "image", image.virtual_size, file.href, image=image)
    size = streams.virtual_size(pieces, file.compression, disk.capacity, f"{where}: disk {file.href!r}")
    return ExportDisk(disk.disk_id, "packed", size, file.href, pieces=pieces,
                      compression=file.compression, format=disk.format or "raw")


def _chunk_names(href: str, path: Path, members: dict[str, _Member] | None) -> list[str]:
    """``href.000000000``, ``.000000001``... as many as exist, in order, without gaps."""
    present = set(members) if members is not None else {
        f"{PurePosixPath(href).parent / n}".removeprefix("./")
        for n in os.listdir(path.parent / PurePosixPath(href).parent)
        if re.fullmatch(re.escape(PurePosixPath(href).name) + r"\.[0-9]{9}", n)}
    names: list[str] = []
    while len(names) < MAX_CHUNKS and href + _CHUNK.format(len(names)) in present:
        names.append(href + _CHUNK.format(len(names)))
    if not names:
        raise OvfError(f"{path}: disk file {href!r} is split in chunks but {href}.000000000 is missing")
    stray = sorted(n for n in present if n.startswith(href + ".") and n not in names
                   and re.fullmatch(r"[0-9]{9}", n[len(href) + 1:]))
    if stray:
        raise OvfError(f"{path}: chunks of {href!r} have a gap before {stray[0]!r}")
    return names


def _piece(path: Path, members: dict[str, _Member] | None, name: str, href: str) -> streams.Piece:
    if members is None:
        file = path.parent / name
        if not file.is_file():
            raise OvfError(f"{path}: disk file {href!r} is missing next to the descriptor "
                           f"({name})" if name != href else
                           f"{path}: disk file {href!r} is missing next to the descriptor")
        return streams.Piece(file, 0, file.stat().st_size)
    member = members.get(name)
    if member is None:
        raise OvfError(f"{path}: the OVF names disk file {href!r} but the OVA lacks it"
                       + (f" ({name})" if name != href else ""))
    return streams.Piece(path, member.offset, member.size)


def safe_href(href: str, where: Path) -> PurePosixPath:
    """Refuse a file reference that leaves the export: absolute, ``..``, a URL."""
    bad = (
        not href
        or "\\" in href
        or "\0" in href
        or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", href) is not None  # http:, file:, C:
        or href.startswith("/")
    )
    parts = PurePosixPath(href).parts
    if bad or ".." in parts:
        raise OvfError(f"{where}: refusing disk file reference {href!r} (outside the export)")
    return PurePosixPath(*[p for p in parts if p != "."])
