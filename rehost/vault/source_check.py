"""A source as the vault knows it, checked without contacting it: its kind, its settings (no
secret is ever stored there) and, for a source that maps its VM networks to target networks
(Hyper-V managed by VMM), each network of its machines and where a failover attaches it.

``rehost source verify`` prints this; ``rehost source map-networks`` changes the map. A
failover refuses a machine of such a source while a network is unmapped
(``rehost.vault.targets.require_mapped_networks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from rehost.errors import NotFound, UsageError
from rehost.vault import targets
from rehost.vault.inventory import spec_of
from rehost.vault.models import MachineRow, SourceRow
from rehost.vault.vault import Vault


@dataclass(frozen=True)
class NetworkLine:
    """One network of one machine's NICs, and the target network it goes to (None: unmapped)."""

    machine: str
    network: str
    target_network: str | None


@dataclass(frozen=True)
class SourceReport:
    name: str
    kind: str
    settings: dict[str, Any]
    #: the source keeps a network map of its own (every network must be in it to fail over)
    maps_networks: bool
    network_map: dict[str, str]
    networks: list[NetworkLine]

    @property
    def unmapped(self) -> list[NetworkLine]:
        return [n for n in self.networks if n.target_network is None] if self.maps_networks else []

    @property
    def ok(self) -> bool:
        return not self.unmapped

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "settings": self.settings,
                "maps_networks": self.maps_networks, "network_map": self.network_map, "ok": self.ok,
                "networks": [{"machine": n.machine, "network": n.network, "target_network": n.target_network}
                             for n in self.networks]}


def _source(vault: Vault, name: str) -> tuple[SourceRow, list[MachineRow]]:
    with vault.session() as s:
        row = s.scalar(select(SourceRow).where(SourceRow.name == name)
                       .options(selectinload(SourceRow.machines).selectinload(MachineRow.disks),
                                selectinload(SourceRow.machines).selectinload(MachineRow.source),
                                selectinload(SourceRow.machines).selectinload(MachineRow.target)))
        if row is None:
            known = ", ".join(s.scalars(select(SourceRow.name).order_by(SourceRow.name))) or "none"
            raise NotFound(f"no source named {name!r} (registered: {known})")
        return row, list(row.machines)


def verify_source(vault: Vault, name: str) -> SourceReport:
    row, machines = _source(vault, name)
    mapped = targets.source_network_map(machines[0]) if machines else None
    lines = []
    for m in machines:
        for net in sorted({n.network for n in spec_of(m).nics}):
            dest = m.network_map.get(net) or (mapped or {}).get(net)
            if dest is None and mapped is None:
                dest = m.network_map.get("default")  # today's default: the target's first network
            lines.append(NetworkLine(m.name, net, dest))
    return SourceReport(row.name, row.kind, dict(row.settings), mapped is not None, mapped or {}, lines)


def map_networks(vault: Vault, name: str, update: dict[str, str]) -> SourceReport:
    """Add (or change) VM network -> target network pairs of a source that keeps a map; each
    target network must exist on the target its machines are assigned to, if any."""
    row, machines = _source(vault, name)
    if not isinstance(row.settings.get("network_map"), dict):
        raise UsageError(f"source {name} ({row.kind}) keeps no network map of its own (a Hyper-V source "
                         f"registered with --vmm or --network-map does); map a machine's networks with "
                         f"rehost replicate MACHINE --network-map SOURCE=TARGET")
    for m in machines:
        if m.target is not None:
            targets.check_network_map(m.target, update)
    with vault.session() as s, s.begin():
        src = s.get(SourceRow, row.id)
        assert src is not None
        src.settings = {**src.settings, "network_map": {**src.settings["network_map"], **update}}
    return verify_source(vault, name)
