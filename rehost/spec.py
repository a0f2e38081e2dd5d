"""The values that cross the provider seam (design §2, "the seam").

Sources discover a ``MachineSpec``; the vault stores it and hands it back (with the vault's
id for the machine) when it asks a source for a snapshot or a target to build the machine.
They are frozen values: an adapter never sees a database row, so a source or target plug-in
can be written, and tested, without the vault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a source machine.

    ``ref`` is the source's own stable name for the disk: an image file's path, a QEMU drive
    id, the agent's device. ``format``/``offset``/``length`` say how to read an image file
    (an OVA member sits at an offset inside the tar); other sources leave the defaults.
    """

    index: int
    size: int
    ref: str
    format: str = "raw"
    offset: int = 0
    length: int | None = None
    #: the bus the source attaches it to (ide, scsi, sata, virtio, nvme), when known
    controller: str | None = None


@dataclass(frozen=True)
class NicSpec:
    """A network card: its MAC and the source network it is plugged into (what the network
    map translates into a target network)."""

    mac: str
    network: str = "default"
    #: the addresses the source saw on it ("10.0.0.5/24"), when it knows them (an agent does):
    #: a target may keep the private IP at failover
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineSpec:
    """What a source knows of a machine; what a target needs to recreate it."""

    name: str
    disks: tuple[DiskSpec, ...] = ()
    #: the vault's id for the machine (bitmap names, digest caches); "" while discovering
    id: str = ""
    firmware: Firmware = Firmware.BIOS
    cpus: int = 1
    memory_mib: int = 512
    nics: tuple[NicSpec, ...] = ()
    #: what the source says the guest runs ("Debian 12", "windows2019srv_64Guest"), if it knows
    guest_os: str | None = None
    #: the source's own settings for this machine (sockets, agent name, moref), read-only
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def total_size(self) -> int:
        return sum(d.size for d in self.disks)

    def disk(self, index: int) -> DiskSpec:
        for d in self.disks:
            if d.index == index:
                return d
        raise KeyError(f"{self.name} has no disk {index}")
