"""OVF/OVA: the machine and its disks from a VMware or VirtualBox export.

An OVA is a tar whose members are stored uncompressed, so each disk is read in place
(``DiskImage`` with the member's offset and size) and nothing is unpacked. A bare ``.ovf``
descriptor names disk files next to it.

The descriptor is untrusted input: no DTDs or entities, no file names that climb out of
the export (``..``, absolute paths, URLs), only regular tar members, and a size limit.
Elements and attributes are matched by local name, so OVF 1.x and 2.x namespaces (and
exporters that get prefixes wrong) all work.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rehost.disks.formats import DiskImage, probe
from rehost.errors import UsageError

#: A descriptor larger than this is not an OVF descriptor (VMware's are a few KiB).
MAX_DESCRIPTOR = 4 << 20

#: rasd:ResourceType of a disk drive item in the VirtualHardwareSection.
_DISK_DRIVE = "17"


#: rasd:ResourceType of processors, memory and network adapters (CIM_ResourceAllocationSettingData)
_CPU, _MEMORY, _NIC = "3", "4", "10"
#: rasd:AllocationUnits of memory -> bytes per unit ("byte * 2^20" is what VMware writes)
_UNITS = {"byte": 1, "kilobytes": 1 << 10, "megabytes": 1 << 20, "mb": 1 << 20,
          "gigabytes": 1 << 30, "gb": 1 << 30}


@dataclass(frozen=True)
class OvfHardware:
    """What the descriptor says of the machine beyond its disks; None where it says nothing.

    ``nics`` are (network name, MAC) pairs; exporters often leave the MAC out ("")."""

    cpus: int | None = None
    memory_mib: int | None = None
    nics: tuple[tuple[str, str], ...] = ()
    guest_os: str | None = None
    #: "bios" or "uefi" when the descriptor names the firmware (VMware's vmw:Config, VirtualBox)
    firmware: str | None = None


@dataclass(frozen=True)
class OvfMachine:
    """One virtual machine of an OVF export and its disks, in the machine's disk order."""

    name: str
    disks: list[DiskImage] = field(default_factory=list)
    hardware: OvfHardware = field(default_factory=OvfHardware, compare=False)


@dataclass(frozen=True)
class _DiskRef:
    disk_id: str
    href: str
    fmt: str | None


def parse(path: Path) -> OvfMachine:
    """Read an ``.ova`` (tar) or a bare ``.ovf`` descriptor; raise UsageError if unusable."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, not an OVA or OVF file")
    if path.suffix.lower() == ".ovf":
        return _parse_ovf_file(path)
    if not tarfile.is_tarfile(path):
        raise UsageError(f"{path}: not an OVA (not a tar archive)")
    return _parse_ova(path)


def _parse_ovf_file(path: Path) -> OvfMachine:
    if path.stat().st_size > MAX_DESCRIPTOR:
        raise UsageError(f"{path}: too large for an OVF descriptor")
    name, refs, hardware = _parse_descriptor(path.read_bytes(), str(path))
    disks = []
    for ref in refs:
        disk = path.parent / _safe_href(ref.href, path)
        if not disk.is_file():
            raise UsageError(f"{path}: disk file {ref.href!r} is missing next to the descriptor")
        disks.append(probe(disk, ref.fmt))
    return OvfMachine(name or path.stem, disks, hardware)


def _parse_ova(path: Path) -> OvfMachine:
    size = path.stat().st_size
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = {_member_name(m.name): m for m in tar.getmembers()}
            descriptors = [n for n in members if n.lower().endswith(".ovf") and "/" not in n]
            if len(descriptors) != 1:
                found = "no" if not descriptors else f"{len(descriptors)}"
                raise UsageError(f"{path}: has {found} OVF descriptors; an OVA needs exactly one")
            desc = members[descriptors[0]]
            if not desc.isfile() or desc.size > MAX_DESCRIPTOR:
                raise UsageError(f"{path}: the OVF descriptor is not a regular file of sane size")
            stream = tar.extractfile(desc)
            assert stream is not None  # a regular member always has a stream
            text = stream.read()
    except tarfile.TarError as e:
        raise UsageError(f"{path}: damaged OVA ({e})") from None

    name, refs, hardware = _parse_descriptor(text, f"{path}:{descriptors[0]}")
    disks = []
    for ref in refs:
        member = members.get(_member_name(str(_safe_href(ref.href, path))))
        if member is None:
            raise UsageError(f"{path}: the OVF names disk file {ref.href!r} but the OVA lacks it")
        if not member.isfile():
            raise UsageError(f"{path}: disk member {ref.href!r} is not a regular file")
        # QEMU's raw offset/size must be whole sectors; tar pads members to 512 bytes.
        length = -(-member.size // 512) * 512
        if member.offset_data + length > size:
            raise UsageError(f"{path}: disk member {ref.href!r} is truncated")
        disks.append(probe(path, ref.fmt, offset=member.offset_data, length=length))
    return OvfMachine(name or path.stem, disks, hardware)


def _member_name(name: str) -> str:
    return name.removeprefix("./")


def _safe_href(href: str, where: Path) -> PurePosixPath:
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
        raise UsageError(f"{where}: refusing disk file reference {href!r} (outside the export)")
    return PurePosixPath(*[p for p in parts if p != "."])


def _parse_descriptor(text: bytes, where: str) -> tuple[str, list[_DiskRef], OvfHardware]:
    """The machine name, its disks' file references (in the machine's disk order) and its
    hardware."""
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise UsageError(f"{where}: OVF descriptors may not contain DTDs or entities")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise UsageError(f"{where}: not a valid OVF descriptor ({e})") from None
    if _local(root.tag) != "Envelope":
        raise UsageError(f"{where}: not an OVF descriptor (no Envelope)")

    files = {_attr(f, "id"): f for f in _children(root, "References", "File")}
    disks = {_attr(d, "diskId"): d for d in _children(root, "DiskSection", "Disk")}
    systems = [e for e in root.iter() if _local(e.tag) == "VirtualSystem"]
    if len(systems) != 1:
        raise UsageError(
            f"{where}: has {len(systems)} virtual systems; rehost imports one machine per OVF"
        )
    system = systems[0]
    name = _attr(system, "id") or _text(system, "Name")

    refs = []
    for disk_id in _disk_order(system, list(disks)):
        disk = disks[disk_id]
        file_ref = _attr(disk, "fileRef")
        if not file_ref:
            raise UsageError(f"{where}: disk {disk_id!r} has no file (blank disks unsupported)")
        file = files.get(file_ref)
        if file is None:
            raise UsageError(f"{where}: disk {disk_id!r} refers to unknown file {file_ref!r}")
        href = _attr(file, "href")
        if _attr(file, "compression"):
            raise UsageError(f"{where}: disk file {href!r} is compressed; unpack the OVA first")
        if _attr(file, "chunkSize"):
            raise UsageError(f"{where}: disk file {href!r} is split in chunks; unsupported")
        refs.append(_DiskRef(disk_id, href, _format(_attr(disk, "format"), href)))
    return name, refs, _hardware(system)


def _hardware(system: ET.Element) -> OvfHardware:
    """CPUs, memory, NICs, guest OS and firmware, each only if the descriptor states it
    plainly: a value that does not parse is left unknown rather than guessed."""
    cpus = memory = None
    nics: list[tuple[str, str]] = []
    for item in system.iter():
        if _local(item.tag) not in ("Item", "EthernetPortItem"):
            continue
        kind = _text(item, "ResourceType")
        quantity = _text(item, "VirtualQuantity")
        if kind == _CPU and quantity.isdigit():
            cpus = int(quantity)
        elif kind == _MEMORY and quantity.isdigit():
            memory = _mib(int(quantity), _text(item, "AllocationUnits"))
        elif kind == _NIC:
            mac = _text(item, "Address")
            nics.append((_text(item, "Connection") or "default", mac if _MAC.fullmatch(mac) else ""))
    return OvfHardware(cpus or None, memory or None, tuple(nics), _guest_os(system), _firmware(system))


_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def _mib(quantity: int, units: str) -> int | None:
    """``2048`` in ``byte * 2^20`` -> 2048; None for units it cannot read."""
    unit = units.replace(" ", "").lower()
    if unit in _UNITS:
        return quantity * _UNITS[unit] >> 20
    m = re.fullmatch(r"byte\*(\d+)\^(\d+)", unit)
    if m is None:
        return None if unit else quantity  # no units: OVF's default for memory is MB
    factor: int = int(m[1]) ** int(m[2])
    return quantity * factor >> 20


def _guest_os(system: ET.Element) -> str | None:
    """VMware's vmw:osType (e.g. debian11_64Guest), else the section's description."""
    for sect in system:
        if _local(sect.tag) == "OperatingSystemSection":
            return _attr(sect, "osType") or _text(sect, "Description") or None
    return None


def _firmware(system: ET.Element) -> str | None:
    """VMware: <vmw:Config vmw:key="firmware" vmw:value="efi"/>; VirtualBox: <Firmware type="EFI"/>."""
    for e in system.iter():
        tag = _local(e.tag)
        value = ""
        if tag == "Config" and _attr(e, "key") == "firmware":
            value = _attr(e, "value")
        elif tag == "Firmware":
            value = _attr(e, "type")
        if value:
            return "uefi" if value.lower() in ("efi", "efi64", "uefi") else "bios"
    return None


def _disk_order(system: ET.Element, disk_ids: list[str]) -> list[str]:
    """Disks in the order the machine's hardware lists its disk drives, then the rest."""
    ordered: list[str] = []
    for item in system.iter():
        if _local(item.tag) not in ("Item", "StorageItem"):
            continue
        if _text(item, "ResourceType") != _DISK_DRIVE:
            continue
        for host in _texts(item, "HostResource"):
            disk_id = host.rsplit("/", 1)[-1]
            if disk_id in disk_ids and disk_id not in ordered:
                ordered.append(disk_id)
    return ordered + [d for d in disk_ids if d not in ordered]


def _format(ovf_format: str, href: str) -> str | None:
    """The QEMU format an OVF disk declares (by URL or file name); None lets QEMU probe."""
    hint = f"{ovf_format} {href}".lower()
    for word, fmt in (("vmdk", "vmdk"), ("vhdx", "vhdx"), ("vhd", "vpc"), ("qcow", "qcow2")):
        if word in hint:
            return fmt
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(element: ET.Element, name: str) -> str:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value.strip()
    return ""


def _children(root: ET.Element, section: str, child: str) -> Iterator[ET.Element]:
    for sect in root:
        if _local(sect.tag) == section:
            yield from (c for c in sect if _local(c.tag) == child)


def _texts(element: ET.Element, name: str) -> Iterator[str]:
    for child in element:
        if _local(child.tag) == name and child.text:
            yield child.text.strip()


def _text(element: ET.Element, name: str) -> str:
    return next(_texts(element, name), "")
