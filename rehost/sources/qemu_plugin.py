"""Source kind ``qemu`` in the registry: its config, what QMP tells of the machine, and the
factory. (The provider itself, bitmaps and fleecing, is ``rehost.sources.qemu``.)

Discovery asks only what QMP answers cheaply and exactly: the vCPU count
(``query-cpus-fast``), the boot memory (``query-memory-size-summary``), each NIC's MAC (the
``mac`` property of every device that has one, via ``qom-list``/``qom-get``) and the
firmware (a ``pflash`` drive means OVMF/UEFI; anything else is reported as BIOS, which
misses only ``-bios OVMF.fd``). A qemu-storage-daemon has none of these: defaults stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import UsageError
from rehost.sources import registry
from rehost.sources.qemu import DEFAULT_GRANULARITY, QemuSource
from rehost.sources.qemu_qmp import commands, connect_qmp, list_disks
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec


@dataclass(frozen=True)
class QemuConfig:
    """A running QEMU VM (or qemu-storage-daemon) reached over a QMP socket of its own."""

    qmp_socket: str = field(metadata={
        "help": "A QMP socket of the running QEMU that rehost may own (QEMU serves one client per "
                "socket: start it with -qmp unix:PATH,server=on,wait=off).", "host_path": True})
    guest_agent: str | None = field(default=None, metadata={
        "help": "The qemu-guest-agent socket, for app-consistent points (default: none, "
                "crash-consistent points only).", "host_path": True})
    granularity: int = field(default=DEFAULT_GRANULARITY, metadata={
        "help": f"Dirty-bitmap granularity in bytes, a power of two >= 512 (default "
                f"{DEFAULT_GRANULARITY}: reads exactly what changed; 64 KiB saves QEMU memory on "
                "multi-TiB disks)."})

    def __post_init__(self) -> None:
        if not self.qmp_socket.strip():
            raise UsageError("give the QMP socket of the running QEMU (--qmp-socket PATH)")
        if self.granularity < 512 or self.granularity & (self.granularity - 1):
            raise UsageError(f"granularity must be a power of two >= 512, not {self.granularity}")
        if self.guest_agent is not None and not Path(self.guest_agent).exists():
            raise UsageError(f"guest agent socket {self.guest_agent} does not exist")


def discover(name: str, config: QemuConfig) -> MachineSpec:
    """The disks and hardware of the QEMU behind the socket (it keeps running)."""
    qmp = connect_qmp(Path(config.qmp_socket))
    try:
        disks = list_disks(qmp)
        hardware = _hardware(qmp)
    finally:
        qmp.close()
    if not disks:
        raise UsageError(f"the QEMU behind {config.qmp_socket} has no writable disk to replicate")
    settings: dict[str, Any] = {"qmp_socket": str(Path(config.qmp_socket).absolute())}
    if config.guest_agent is not None:
        settings["guest_agent"] = str(Path(config.guest_agent).absolute())
    if config.granularity != DEFAULT_GRANULARITY:
        settings["granularity"] = config.granularity
    return MachineSpec(
        name=name, settings=settings,
        disks=tuple(DiskSpec(index=d.index, size=d.size, ref=d.ref, format="qemu") for d in disks),
        **hardware,
    )


def _hardware(qmp: QmpClient) -> dict[str, Any]:
    """CPUs, memory, NICs and firmware of a VM; {} for a qemu-storage-daemon."""
    if "system_powerdown" not in commands(qmp):
        return {}
    out: dict[str, Any] = {
        "cpus": max(1, len(qmp.execute("query-cpus-fast"))),
        "memory_mib": int(qmp.execute("query-memory-size-summary")["base-memory"]) >> 20,
        "nics": tuple(NicSpec(mac=mac) for mac in _macs(qmp)),
    }
    flash = [b for b in qmp.execute("query-block")
             if "pflash" in f"{b.get('device')} {b.get('qdev')}" and b.get("inserted")]
    out["firmware"] = Firmware.UEFI if flash else Firmware.BIOS
    return out


def _macs(qmp: QmpClient) -> list[str]:
    """The MAC of every user-created device that has one (NICs), in QOM order."""
    macs = []
    for folder in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in qmp.execute("qom-list", {"path": folder}):
            if not str(child.get("type", "")).startswith("child<"):
                continue
            try:
                macs.append(str(qmp.execute("qom-get", {"path": f"{folder}/{child['name']}",
                                                        "property": "mac"})))
            except QmpError:
                continue  # not a network card
    return macs


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> QemuSource:
    from rehost.guest.agent import GuestAgent

    sock = settings.get("guest_agent")
    return QemuSource.from_settings(dict(settings), GuestAgent(Path(sock), timeout=10) if sock else None)


PLUGIN = registry.register(registry.SourcePlugin(
    kind="qemu",
    summary="A running KVM/QEMU VM: disks found over QMP, changed blocks tracked by QEMU's dirty "
            "bitmaps, read while the guest runs (no restart).",
    config=QemuConfig,
    capabilities=registry.Capabilities(
        change_tracking="dirty-bitmap", can_shutdown=True, app_consistent="guest-agent"),
    discover=discover,
    open=_open,
))
