"""VMX files: the machine a VMware VM folder describes (a folder copied off a datastore, or a
Workstation/Fusion VM).

A ``.vmx`` is ``key = "value"`` lines; keys are case-insensitive (VMware writes ``fileName``
and ``filename`` alike) and special characters in values are escaped as ``|XX`` (hex). rehost
reads the name, firmware, CPUs, memory, guest OS, the hard disks (``scsiX:Y.fileName`` and
the same on sata, nvme and ide; CD-ROMs are left out) and the NICs (``ethernetN``: its static
``address`` or ``generatedAddress``, and ``networkName``). Pure parsing: where the disk files
are is ``rehost.sources.image``'s business.

Untrusted input: a size limit, only plain digits taken as numbers; anything unusable is a
``VmxError`` naming what and where, and nothing else escapes (a fuzzer checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rehost.errors import UsageError

#: VMware's own .vmx files are a few KiB
MAX_VMX = 1 << 20
#: controllers whose units can hold hard disks, in the order rehost lists their disks
_BUSES = ("scsi", "sata", "nvme", "ide")
_DISK_KEY = re.compile(r"(scsi|sata|nvme|ide)([0-9]{1,2}):([0-9]{1,3})\.filename")
_NIC_KEY = re.compile(r"ethernet([0-9]{1,2})\.present")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_CDROM = ("cdrom-image", "cdrom-raw", "atapi-cdrom", "cdrom")


class VmxError(UsageError):
    """A .vmx rehost cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class VmxDisk:
    """A hard disk: its controller slot (``scsi0:1``) and the VMDK the file names."""

    bus: str
    controller: int
    unit: int
    file: str

    @property
    def slot(self) -> str:
        return f"{self.bus}{self.controller}:{self.unit}"


@dataclass(frozen=True)
class VmxMachine:
    """What a .vmx says of its machine; None where it says nothing."""

    name: str
    disks: tuple[VmxDisk, ...]
    firmware: str = "bios"
    cpus: int | None = None
    memory_mib: int | None = None
    #: (network name, MAC) per present NIC, in ethernetN order; MAC "" if none is written
    nics: tuple[tuple[str, str], ...] = ()
    guest_os: str | None = None


def parse(text: bytes, where: str) -> VmxMachine:
    """Parse .vmx bytes; raise VmxError naming ``where`` if they are unusable."""
    keys = read_keys(text, where)
    disks = _disks(keys)
    if not disks:
        raise VmxError(f"{where}: names no virtual hard disk (no scsiX:Y/sataX:Y/nvmeX:Y/ideX:Y "
                       "fileName of a .vmdk)")
    firmware = "uefi" if keys.get("firmware", "").lower() in ("efi", "efi64", "uefi") else "bios"
    return VmxMachine(
        name=keys.get("displayname", "")[:200], disks=disks, firmware=firmware,
        cpus=_int(keys.get("numvcpus", "")), memory_mib=_int(keys.get("memsize", "")),
        nics=_nics(keys), guest_os=keys.get("guestos", "")[:200] or None)


def read_keys(text: bytes, where: str) -> dict[str, str]:
    """The key/value pairs, keys lower-cased, values unescaped; later lines win (as in VMware)."""
    if len(text) > MAX_VMX:
        raise VmxError(f"{where}: too large for a .vmx file")
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise VmxError(f"{where}: not a .vmx file (not UTF-8 text)") from None
    keys: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key = key.strip().lower()
        if not eq or not re.fullmatch(r"[a-z0-9_.:\-\[\]]{1,200}", key):
            continue  # not a setting (VMware skips what it cannot read too)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        keys[key] = _unescape(value)
    if ".encoding" not in keys and "config.version" not in keys and "displayname" not in keys:
        raise VmxError(f"{where}: not a .vmx file (no .encoding, config.version or displayName)")
    return keys


def _unescape(value: str) -> str:
    """``|22`` -> ``"``: how VMware writes characters that would break the line."""
    return re.sub(r"\|([0-9A-Fa-f]{2})", lambda m: chr(int(m[1], 16)), value)


def _present(keys: dict[str, str], device: str) -> bool:
    """VMware leaves ``present`` out only where it does not matter; "FALSE" means absent."""
    return keys.get(f"{device}.present", "true").lower() not in ("false", "0", "no")


def _disks(keys: dict[str, str]) -> tuple[VmxDisk, ...]:
    found = []
    for key, value in keys.items():
        m = _DISK_KEY.fullmatch(key)
        if m is None or not value:
            continue
        bus, controller, unit = m[1], int(m[2]), int(m[3])
        device = f"{bus}{controller}:{unit}"
        kind = keys.get(f"{device}.devicetype", "").lower()
        if not _present(keys, device) or not _present(keys, f"{bus}{controller}"):
            continue
        if kind in _CDROM or not value.lower().endswith(".vmdk"):
            continue  # CD-ROMs, floppies, raw devices
        found.append(VmxDisk(bus, controller, unit, value))
    first = keys.get("bios.hddorder", "").split(",")[0].strip().lower()
    found.sort(key=lambda d: (d.slot != first, _BUSES.index(d.bus), d.controller, d.unit))
    return tuple(found)


def _nics(keys: dict[str, str]) -> tuple[tuple[str, str], ...]:
    nics = []
    numbers = sorted(int(m[1]) for k in keys if (m := _NIC_KEY.fullmatch(k)))
    for n in numbers:
        dev = f"ethernet{n}"
        if not _present(keys, dev):
            continue
        static = keys.get(f"{dev}.addresstype", "").lower() == "static"
        address, generated = keys.get(f"{dev}.address", ""), keys.get(f"{dev}.generatedaddress", "")
        mac = ((address if static else "") or generated or address).strip().lower()
        network = (keys.get(f"{dev}.networkname") or keys.get(f"{dev}.connectiontype") or "default")[:200]
        nics.append((network, mac if _MAC.fullmatch(mac) else ""))
    return tuple(nics)


def _int(value: str) -> int | None:
    value = value.strip()
    return int(value) if re.fullmatch(r"[0-9]{1,9}", value) and int(value) > 0 else None
