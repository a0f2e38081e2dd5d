"""OVF descriptors: the machines, disks and startup order a VMware (or VirtualBox) export
describes. Pure parsing, no file I/O: ``rehost.disks.ova`` finds the descriptor and the disk
files in an ``.ova`` or next to an ``.ovf``.

A descriptor may describe one machine (``VirtualSystem``) or a vApp
(``VirtualSystemCollection``, possibly nested) of several, each with its own disks; the vApp's
``StartupSection`` orders them. A disk is backed by a file (possibly gzip-compressed,
``ovf:compression``, or split in chunks, ``ovf:chunkSize``) or by nothing at all: a blank
disk of ``ovf:capacity`` bytes that the importer creates empty.

The descriptor is untrusted input: no DTDs or entities, a size limit, only plain ASCII
digits taken as numbers, bounded unit exponents and nesting. Everything it cannot use is an
``OvfError`` naming what and where; nothing else may escape (a fuzzer checks). Elements and
attributes are matched by local name, so OVF 1.x and 2.x namespaces (and exporters that get
prefixes wrong) all work.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rehost.errors import UsageError

#: A descriptor larger than this is not an OVF descriptor (VMware's are a few KiB; the vCenter
#: appliance's, with every deployment option, ~330 KiB).
MAX_DESCRIPTOR = 4 << 20
#: vApps nest; deeper than this is no export a VMware product writes
MAX_NESTING = 16
#: VMware's largest virtual disk is 62 TiB; a capacity beyond this is a broken descriptor
MAX_CAPACITY = 64 << 40

#: rasd:ResourceType of a disk drive item in the VirtualHardwareSection.
_DISK_DRIVE = "17"
#: rasd:ResourceType of processors, memory and network adapters (CIM_ResourceAllocationSettingData)
_CPU, _MEMORY, _NIC = "3", "4", "10"
#: allocation units -> bytes per unit ("byte * 2^20" is what VMware writes)
_UNITS = {"byte": 1, "bytes": 1, "kilobytes": 1 << 10, "kb": 1 << 10, "megabytes": 1 << 20,
          "mb": 1 << 20, "gigabytes": 1 << 30, "gb": 1 << 30, "terabytes": 1 << 40, "tb": 1 << 40}
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_DIGITS = re.compile(r"[0-9]{1,20}")


class OvfError(UsageError):
    """A descriptor rehost cannot use; the message names the file and what is wrong."""


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
class OvfFile:
    """A file of the export (``References/File``)."""

    href: str
    #: the declared size (of the whole file, all chunks together); None if not stated
    size: int | None = None
    #: "" or "gzip" (ovftool --compress); "identity" is read as ""
    compression: str = ""
    #: the file is split into ``href.000000000``, ``href.000000001``... of this size
    chunk_size: int | None = None


@dataclass(frozen=True)
class OvfDisk:
    """A disk of a machine: a file's contents, or blank (``file`` None) of ``capacity`` bytes."""

    disk_id: str
    capacity: int | None
    file: OvfFile | None
    #: the QEMU format the descriptor declares; None lets QEMU probe
    format: str | None


@dataclass(frozen=True)
class Startup:
    """Where a machine stands in its vApp's startup order (OVF ``StartupSection``).

    ``order`` has one number per vApp level, outermost first (machines in nested vApps start
    with their vApp); equal orders start together, 0 means "no order given". Delays are
    seconds. A recovery plan reads this as ordered groups.
    """

    vapp: str
    order: tuple[int, ...]
    start_delay: int = 0
    stop_delay: int = 0
    start_action: str = "powerOn"
    stop_action: str = "powerOff"

    def to_json(self) -> dict[str, Any]:
        return {"vapp": self.vapp, "order": list(self.order), "start_delay": self.start_delay,
                "stop_delay": self.stop_delay, "start_action": self.start_action,
                "stop_action": self.stop_action}


@dataclass(frozen=True)
class OvfSystem:
    """One virtual machine of the descriptor, its disks in the machine's disk order."""

    id: str
    name: str
    disks: tuple[OvfDisk, ...] = ()
    hardware: OvfHardware = field(default_factory=OvfHardware)
    startup: Startup | None = None


@dataclass(frozen=True)
class Envelope:
    """Everything rehost reads from one descriptor."""

    systems: tuple[OvfSystem, ...]
    #: the top vApp's id, "" for a single machine
    vapp: str = ""

    def system(self, vm: str | None, where: str) -> OvfSystem:
        """The machine named ``vm`` (its id or name); without a name, the only one."""
        if vm:
            for s in self.systems:
                if vm in (s.id, s.name):
                    return s
            raise OvfError(f"{where}: has no virtual machine {vm!r} (it has {self.names()})")
        if len(self.systems) != 1:
            raise OvfError(f"{where}: is a vApp of {len(self.systems)} virtual machines "
                           f"({self.names()}); pick one, or import each as its own machine")
        return self.systems[0]

    def names(self) -> str:
        return ", ".join(s.id for s in self.systems)


def parse_descriptor(text: bytes, where: str) -> Envelope:
    """Parse descriptor bytes; raise OvfError naming ``where`` if they are unusable."""
    root = _xml(text, where)
    files = {}
    for f in _children(root, "References", "File"):
        files[_attr(f, "id")] = _file(f, where)
    props = _properties(root)
    disks = {_attr(d, "diskId"): d for d in _children(root, "DiskSection", "Disk")}
    found: list[tuple[ET.Element, Startup | None]] = []
    _walk(root, "", (), found, where, 0)
    if not found:
        raise OvfError(f"{where}: describes no virtual machine (no VirtualSystem)")
    config = _configuration(root)
    single = len(found) == 1 and not config
    systems = []
    for element, startup in found:
        sid = _attr(element, "id") or _text(element, "Name")
        refs = _disk_refs(element, list(disks), files, config, include_rest=single)
        system_disks = tuple(
            _disk(disks[ref], files, props, where) if ref in disks else _file_disk(ref, files)
            for ref in refs)
        systems.append(OvfSystem(sid, _text(element, "Name") or sid, system_disks,
                                 _hardware(element, config), startup))
    ids = [s.id for s in systems]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise OvfError(f"{where}: names two virtual machines {dup!r}")
    vapp = next((_attr(e, "id") for e in root if _local(e.tag) == "VirtualSystemCollection"), "")
    return Envelope(tuple(systems), vapp)


def _xml(text: bytes, where: str) -> ET.Element:
    if len(text) > MAX_DESCRIPTOR:
        raise OvfError(f"{where}: too large for an OVF descriptor")
    if text.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\0" in text:
        raise OvfError(f"{where}: not a UTF-8 OVF descriptor")
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise OvfError(f"{where}: OVF descriptors may not contain DTDs or entities")
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError, LookupError) as e:  # LookupError: unknown encoding
        raise OvfError(f"{where}: not a valid OVF descriptor ({e})") from None
    if _local(root.tag) != "Envelope":
        raise OvfError(f"{where}: not an OVF descriptor (no Envelope)")
    return root


def _walk(element: ET.Element, vapp: str, order: tuple[int, ...],
          found: list[tuple[ET.Element, Startup | None]], where: str, depth: int) -> None:
    """Collect the virtual systems under ``element`` with their place in the startup order."""
    if depth > MAX_NESTING:
        raise OvfError(f"{where}: vApps nested more than {MAX_NESTING} deep")
    tag = _local(element.tag)
    if tag == "VirtualSystem":
        found.append((element, None))
        return
    if tag not in ("Envelope", "VirtualSystemCollection"):
        return
    entries = _startup_entries(element) if tag == "VirtualSystemCollection" else {}
    name = _attr(element, "id") if tag == "VirtualSystemCollection" else ""
    for child in element:
        kind = _local(child.tag)
        if kind not in ("VirtualSystem", "VirtualSystemCollection"):
            continue
        if not name:  # the envelope's own child: a single machine, or the top vApp
            _walk(child, vapp, order, found, where, depth + 1)
            continue
        entry = entries.get(_attr(child, "id"), {})
        child_order = (*order, entry.get("order", 0))
        if kind == "VirtualSystemCollection":
            _walk(child, vapp or name, child_order, found, where, depth + 1)
            continue
        found.append((child, Startup(
            vapp or name, child_order, entry.get("startDelay", 0), entry.get("stopDelay", 0),
            str(entry.get("startAction", "powerOn")), str(entry.get("stopAction", "powerOff")))))


def _startup_entries(collection: ET.Element) -> dict[str, dict[str, Any]]:
    """StartupSection items by the id of the system they order (OVF defaults where unstated)."""
    entries: dict[str, dict[str, Any]] = {}
    for sect in collection:
        if _local(sect.tag) != "StartupSection":
            continue
        for item in sect:
            if _local(item.tag) != "Item":
                continue
            entry: dict[str, Any] = {}
            for key in ("order", "startDelay", "stopDelay"):
                value = _int(_attr(item, key))
                if value is not None:
                    entry[key] = value
            for key in ("startAction", "stopAction"):
                if _attr(item, key):
                    entry[key] = _attr(item, key)[:32]
            entries[_attr(item, "id")] = entry
    return entries


def _file(element: ET.Element, where: str) -> OvfFile:
    href = _attr(element, "href")
    compression = _attr(element, "compression").lower()
    if compression in ("", "identity"):
        compression = ""
    elif compression != "gzip":
        raise OvfError(f"{where}: disk file {href!r} uses compression {compression!r}; "
                       "OVF knows gzip and identity")
    chunk = _attr(element, "chunkSize")
    chunk_size = _int(chunk)
    if chunk and not chunk_size:
        raise OvfError(f"{where}: disk file {href!r} has a bad chunk size {chunk!r}")
    return OvfFile(href, _int(_attr(element, "size")), compression, chunk_size)


def _disk(element: ET.Element, files: dict[str, OvfFile], props: dict[str, str],
          where: str) -> OvfDisk:
    disk_id = _attr(element, "diskId")
    capacity = _capacity(element, props)
    file_ref = _attr(element, "fileRef")
    file = None
    if file_ref:
        file = files.get(file_ref)
        if file is None:
            raise OvfError(f"{where}: disk {disk_id!r} refers to unknown file {file_ref!r}")
    elif capacity is None:
        raise OvfError(f"{where}: blank disk {disk_id!r} has no usable capacity "
                       f"({_attr(element, 'capacity')!r} {_attr(element, 'capacityAllocationUnits')!r}; "
                       "1 byte to 64 TiB)")
    href = file.href if file else ""
    return OvfDisk(disk_id, capacity, file, _format(_attr(element, "format"), href))


def _file_disk(file_id: str, files: dict[str, OvfFile]) -> OvfDisk:
    """A drive whose HostResource names a file directly (``ovf:/file/ID``, OVF 1.0)."""
    file = files[file_id]
    return OvfDisk(file_id, None, file, _format("", file.href))


def _capacity(disk: ET.Element, props: dict[str, str]) -> int | None:
    """Bytes: ``ovf:capacity`` (a number or a ``${property}`` with a default) times its units."""
    raw = _attr(disk, "capacity")
    m = re.fullmatch(r"\$\{([^}]{1,200})\}", raw)
    if m:
        raw = props.get(m[1], "")
    count = _int(raw)
    unit = _unit_bytes(_attr(disk, "capacityAllocationUnits") or "byte")
    if count is None or unit is None or not 0 < count * unit <= MAX_CAPACITY:
        return None
    return count * unit


def _properties(root: ET.Element) -> dict[str, str]:
    """ProductSection properties' default values by key (blank disk sizes refer to them)."""
    props: dict[str, str] = {}
    for e in root.iter():
        if _local(e.tag) == "Property" and _attr(e, "key"):
            props.setdefault(_attr(e, "key"), _attr(e, "value"))
    return props


def _unit_bytes(units: str) -> int | None:
    """``byte * 2^30`` -> 2**30; ``gigabytes`` -> 2**30; None for units it cannot read."""
    unit = units.replace(" ", "").lower()
    if unit in _UNITS:
        return _UNITS[unit]
    m = re.fullmatch(r"bytes?\*([0-9]{1,4})\^([0-9]{1,2})", unit)
    if m is None or int(m[2]) > 60:
        return None
    factor: int = int(m[1]) ** int(m[2])
    return factor if 0 < factor <= 1 << 60 else None


def _configuration(root: ET.Element) -> str:
    """The deployment option an import without a choice gets (``ovf:default``, else the
    first); "" when the descriptor offers none. Items of other options are left out."""
    configs = list(_children(root, "DeploymentOptionSection", "Configuration"))
    chosen = next((c for c in configs if _attr(c, "default").lower() == "true"), None)
    chosen = chosen if chosen is not None else (configs[0] if configs else None)
    return _attr(chosen, "id") if chosen is not None else ""


def _applies(item: ET.Element, config: str) -> bool:
    """An item with ``ovf:configuration="a b"`` exists only in deployment options a and b."""
    only = _attr(item, "configuration")
    return not only or config in only.split()


def _hardware(system: ET.Element, config: str = "") -> OvfHardware:
    """CPUs, memory, NICs, guest OS and firmware, each only if the descriptor states it
    plainly: a value that does not parse is left unknown rather than guessed."""
    cpus = memory = None
    nics: list[tuple[str, str]] = []
    for item in system.iter():
        if _local(item.tag) not in ("Item", "EthernetPortItem") or not _applies(item, config):
            continue
        kind = _text(item, "ResourceType")
        quantity = _int(_text(item, "VirtualQuantity"))
        if kind == _CPU and quantity:
            cpus = min(quantity, 4096)
        elif kind == _MEMORY and quantity:
            memory = _mib(quantity, _text(item, "AllocationUnits"))
        elif kind == _NIC:
            mac = _text(item, "Address")
            nics.append((_text(item, "Connection") or "default", mac if _MAC.fullmatch(mac) else ""))
    return OvfHardware(cpus or None, memory or None, tuple(nics), _guest_os(system), _firmware(system))


def _mib(quantity: int, units: str) -> int | None:
    """``2048`` in ``byte * 2^20`` -> 2048; no units: OVF's default for memory is MB."""
    if not units.strip():
        return quantity
    unit = _unit_bytes(units)
    return None if unit is None else quantity * unit >> 20


def _guest_os(system: ET.Element) -> str | None:
    """VMware's vmw:osType (e.g. debian11_64Guest), else the section's description."""
    for sect in system:
        if _local(sect.tag) == "OperatingSystemSection":
            return (_attr(sect, "osType") or _text(sect, "Description"))[:200] or None
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


def _disk_refs(system: ET.Element, disk_ids: list[str], files: dict[str, OvfFile], config: str,
               *, include_rest: bool) -> list[str]:
    """The disks (or directly named files) in the order the machine's hardware lists its disk
    drives; a lone machine also gets the section's unreferenced disks after them."""
    ordered: list[str] = []
    for item in system.iter():
        if _local(item.tag) not in ("Item", "StorageItem") or not _applies(item, config):
            continue
        if _text(item, "ResourceType") != _DISK_DRIVE:
            continue
        for host in _texts(item, "HostResource"):
            ref = host.rsplit("/", 1)[-1]
            known = ref in disk_ids or ("/file/" in host and ref in files)
            if known and ref not in ordered:
                ordered.append(ref)
    if include_rest:
        ordered += [d for d in disk_ids if d not in ordered]
    return ordered


def _format(ovf_format: str, href: str) -> str | None:
    """The QEMU format an OVF disk declares (by URL or file name); None lets QEMU probe."""
    hint = f"{ovf_format} {href}".lower()
    for word, fmt in (("vmdk", "vmdk"), ("vhdx", "vhdx"), ("vhd", "vpc"), ("qcow", "qcow2")):
        if word in hint:
            return fmt
    return None


def _int(value: str) -> int | None:
    """A plain ASCII decimal (``str.isdigit`` takes "²", which ``int`` refuses); else None."""
    value = value.strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""  # comments have a function tag


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
