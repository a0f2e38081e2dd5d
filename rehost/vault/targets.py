"""Targets in the vault: registering, verifying, and choosing one (and its network) for a
machine. A target's kind is looked up in ``rehost.targets.registry``; nothing here knows one
kind from another."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from rehost import plugin_config
from rehost.errors import AlreadyExists, InvalidState, NotFound, UsageError
from rehost.plugin_config import PathGuard
from rehost.targets import registry
from rehost.targets.base import Target, VerifyReport
from rehost.vault.inventory import check_name, spec_of
from rehost.vault.models import MachineRow, TargetRow
from rehost.vault.vault import Vault


def add_target(vault: Vault, kind: str, name: str, options: Mapping[str, Any], *,
               confine: PathGuard | None = None) -> TargetRow:
    """Register a target of ``kind``; its options are checked against the kind's config, and
    its folders against ``confine`` (the API's allowed roots) when given."""
    check_name(name, "target")
    plugin = registry.get(kind)
    config = plugin.make_config(options)  # unknown and mistyped options first
    if confine is not None:
        inside = plugin_config.confined(plugin.config, options, confine, f"target kind {kind}")
        config = plugin.make_config(inside)
    with vault.session() as s, s.begin():
        if s.scalar(select(TargetRow).where(TargetRow.name == name)) is not None:
            raise AlreadyExists(f"a target named {name!r} already exists")
        if plugin.prepare is not None:
            plugin.prepare(config)
        row = TargetRow(name=name, kind=kind, settings=plugin_config.to_json(config))
        s.add(row)
    return row


def add_local_target(
    vault: Vault, name: str, path: Path, *, accel: str = "tcg", memory_mib: int = 256,
    confine: PathGuard | None = None,
) -> TargetRow:
    """``rehost target add-local``: the spelling from before the registry."""
    return add_target(vault, "local", name, {"path": path, "accel": accel, "memory_mib": memory_mib},
                      confine=confine)


def get_target(vault: Vault, name: str) -> TargetRow:
    with vault.session() as s:
        row = s.scalar(select(TargetRow).where(TargetRow.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(TargetRow.name))) or "none"
            raise NotFound(
                f"no target named {name!r} (targets: {known}; add one with rehost target add KIND NAME)"
            )
        return row


def list_targets(vault: Vault) -> list[TargetRow]:
    with vault.session() as s:
        return list(s.scalars(select(TargetRow).order_by(TargetRow.name)))


def provider(row: TargetRow) -> Target:
    return registry.open_target(row.kind, row.settings)


def verify_target(vault: Vault, name: str, needed_bytes: int = 0) -> VerifyReport:
    """Run the checks and remember the verdict: failover refuses a target that failed."""
    row = get_target(vault, name)
    report = provider(row).verify(needed_bytes)
    with vault.session() as s, s.begin():
        t = s.get(TargetRow, row.id)
        assert t is not None
        t.verified_ok = report.ok
        t.verify_report = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]
        t.verified_at = datetime.now(UTC)
    return report


def target_of(vault: Vault, machine: MachineRow, override: str | None = None) -> TargetRow:
    """The target a machine fails over to: given, assigned, or the only one there is."""
    if override:
        return get_target(vault, override)
    if machine.target_id:
        with vault.session() as s:
            row = s.get(TargetRow, machine.target_id)
            if row is not None:
                return row
    targets = list_targets(vault)
    if len(targets) == 1:
        return targets[0]
    if not targets:
        raise InvalidState("no target yet: add one with rehost target add local NAME --path DIR")
    raise UsageError(f"{machine.name} has no target assigned: pass --target "
                     f"({', '.join(t.name for t in targets)})")


def misfits(vault: Vault, machine: MachineRow, target: str | None = None) -> str:
    """Why the machine does not fit its target's limits ("" when it does, or when it has no
    target yet): checked before replication starts, so a disk Azure would refuse is found
    before hours of copying, not at failover."""
    try:
        row = target_of(vault, machine, target)
    except (InvalidState, UsageError):
        return ""
    failed = [c for c in provider(row).check_machine(spec_of(machine)) if not c.ok]
    if not failed:
        return ""
    return f"{machine.name} does not fit target {row.name}: " + "; ".join(
        f"{c.name}: {c.detail}" for c in failed)


def assign(vault: Vault, machine: MachineRow, target: TargetRow, network_map: dict[str, str]) -> None:
    """Remember the machine's target and network map; the map must name the target's networks."""
    check_network_map(target, network_map)
    with vault.session() as s, s.begin():
        m = s.get(MachineRow, machine.id)
        assert m is not None
        m.target_id = target.id
        if network_map:
            m.network_map = network_map


def parse_network_map(items: list[str]) -> dict[str, str]:
    """``src=dst`` pairs; ``assign`` checks the destinations against the target's networks."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise UsageError(f"--network-map takes SOURCE=TARGET, not {item!r}")
        out[src] = dst
    return out


def check_network_map(target: TargetRow, network_map: Mapping[str, str]) -> None:
    names = [n.name for n in provider(target).networks()]
    for dst in network_map.values():
        if dst not in names:
            raise UsageError(f"target network {dst!r} does not exist on target {target.name} "
                             f"({', '.join(names)})")


def source_network_map(machine: MachineRow) -> dict[str, str] | None:
    """The map its source keeps (a Hyper-V source managed by VMM: VM network -> target
    network), or None for a source whose machines keep the default network."""
    found = machine.source.settings.get("network_map")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None


def unmapped_networks(machine: MachineRow) -> list[str]:
    """The networks of the machine's NICs that neither its source's map nor its own names
    (always empty for a source without a map of its own)."""
    mapped = source_network_map(machine)
    if mapped is None:
        return []
    nets = sorted({n.network for n in spec_of(machine).nics})
    return [n for n in nets if n not in mapped and n not in machine.network_map]


def require_mapped_networks(machine: MachineRow, target: TargetRow) -> None:
    """A failover of a machine whose source maps its networks goes only when every network of
    its NICs is mapped to a network the target offers: guessing would attach a production
    machine to the wrong network."""
    missing = unmapped_networks(machine)
    if missing:
        raise InvalidState(
            f"cannot fail over {machine.name}: its source {machine.source.name} maps VM networks to "
            f"target networks, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"mapped; map them with rehost source map-networks {machine.source.name} "
            + " ".join(f"{n}=TARGETNET" for n in missing))
    mapped = source_network_map(machine)
    if mapped:
        check_network_map(target, {n: mapped[n] for n in mapped
                                   if n in {nic.network for nic in spec_of(machine).nics}})


def network_for(target: Target, machine: MachineRow) -> str:
    """The network a failed-over machine starts on: its network map's entry for its source
    network ("default" for an image), else its source's map's entry, else the target's first
    network that is not isolated."""
    nets = list(target.networks())
    nics = spec_of(machine).nics
    source_net = nics[0].network if nics else "default"
    chosen = (machine.network_map.get(source_net) or (source_network_map(machine) or {}).get(source_net)
              or machine.network_map.get("default"))
    if chosen is None:
        chosen = next((n.name for n in nets if not n.isolated), nets[0].name)
    if chosen not in [n.name for n in nets]:
        raise InvalidState(f"{machine.name} is mapped to network {chosen!r}, which its target does not "
                           f"offer ({', '.join(n.name for n in nets)}); fix it with rehost replicate "
                           f"{machine.name} --network-map default=NETWORK")
    return chosen
