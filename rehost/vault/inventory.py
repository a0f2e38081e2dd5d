"""Sources and machines: registering them and looking them up by name.

Every kind of source registers through one service, ``add_source``, driven by the source
registry (``rehost.sources.registry``): the kind's typed config validates the input, its
``discover`` finds the machine, and the vault stores the ``MachineSpec`` it returns (disks as
``DiskRow``s, the rest in ``MachineRow.spec``). ``spec_of`` gives that frozen value back to
sources and targets, which never see a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from rehost import plugin_config
from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.plugin_config import PathGuard
from rehost.sources import registry
from rehost.sources.base import SourceProvider
from rehost.spec import DiskSpec, Firmware, MachineSpec, NicSpec
from rehost.vault.models import DiskRow, MachineRow, SourceRow
from rehost.vault.vault import Vault

if TYPE_CHECKING:
    from rehost.sources.physical import Invitation

#: what a machine is loaded with: its disks, source and policy (one query each for a list)
_LOAD = (selectinload(MachineRow.disks), selectinload(MachineRow.source), selectinload(MachineRow.policy))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str = "machine") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{what} name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Registered:
    """A newly registered machine, and what the operator must be shown once (a physical
    machine's one-time passphrase for its agent)."""

    machine: MachineRow
    invitation: Invitation | None = None


def add_source(vault: Vault, kind: str, name: str, options: Mapping[str, Any], *,
               confine: PathGuard | None = None) -> Registered:
    """Register a machine from a source of ``kind`` (image, qemu, physical, ...) with the
    kind's config options.

    Everything is validated, and the machine discovered, before anything is written: a bad
    input leaves the vault as it was. ``name`` may be empty when the source names the machine
    (an OVA). ``confine`` (the API's allowed roots) checks every path the caller gave and
    every disk file the source found (a VMX may name disks anywhere).
    """
    plugin = registry.get(kind)
    config = registry.make_config(kind, options)  # unknown and mistyped options first
    if confine is not None:
        config = registry.make_config(kind, plugin_config.confined(plugin.config, options, confine,
                                                                   f"source kind {kind}"))
    if name:
        check_name(name)
        with vault.session() as s:
            _refuse_taken(s, name)
    spec = plugin.discover(name, config)
    if confine is not None and plugin.capabilities.disks_are_files:
        for d in spec.disks:
            confine(d.ref, f"disk {d.index} of {spec.name}")
    check_name(spec.name)
    with vault.session() as s, s.begin():
        _refuse_taken(s, spec.name)
        src = SourceRow(name=spec.name, kind=kind, settings=dict(spec.settings))
        waiting = "waiting for its agent to register" if plugin.capabilities.disks_arrive_later else ""
        m = MachineRow(name=spec.name, source=src, state="registered", state_reason=waiting,
                       spec=spec_json(spec), disks=_disk_rows(spec))
        s.add_all([src, m])
    invitation = plugin.enroll(spec, config, source_context(vault)) if plugin.enroll else None
    return Registered(get_machine(vault, spec.name), invitation)


def _refuse_taken(s: Session, name: str) -> None:
    if s.scalar(select(MachineRow).where(MachineRow.name == name)) is not None:
        raise AlreadyExists(f"a machine named {name!r} is already registered")
    if s.scalar(select(SourceRow).where(SourceRow.name == name)) is not None:
        raise AlreadyExists(f"a source named {name!r} is already registered")


def _disk_rows(spec: MachineSpec) -> list[DiskRow]:
    return [DiskRow(index=d.index, path=d.ref, format=d.format, offset=d.offset, length=d.length,
                    size=d.size) for d in spec.disks]


def add_image_source(vault: Vault, name: str | None, paths: Sequence[Path],
                     vm: str | None = None, *, confine: PathGuard | None = None) -> MachineRow:
    """Register a machine made of image files (or an OVA/OVF, or one ``vm`` of a vApp) as a
    source of its own."""
    options: dict[str, Any] = {"paths": [str(p) for p in paths], **({"vm": vm} if vm else {})}
    return add_source(vault, "image", name or "", options, confine=confine).machine


def spec_json(spec: MachineSpec) -> dict[str, Any]:
    """What ``MachineRow.spec`` keeps: the spec beyond its disks (those are DiskRows)."""
    return {"firmware": spec.firmware.value, "cpus": spec.cpus, "memory_mib": spec.memory_mib,
            "nics": [{"mac": n.mac, "network": n.network, **({"addresses": list(n.addresses)}
                                                             if n.addresses else {})} for n in spec.nics],
            "guest_os": spec.guest_os}


def spec_of(machine: MachineRow) -> MachineSpec:
    """The machine as a frozen value for sources and targets: disks from its DiskRows, the
    hardware its source discovered (defaults where it knew nothing), its source's settings and
    the vault's id for it."""
    stored = machine.spec or {}
    default = MachineSpec(name=machine.name)
    return MachineSpec(
        name=machine.name, id=machine.id,
        disks=tuple(DiskSpec(index=d.index, size=d.size, ref=d.path, format=d.format,
                             offset=d.offset or 0, length=d.length) for d in machine.disks),
        firmware=Firmware(stored.get("firmware") or default.firmware),
        cpus=int(stored.get("cpus") or default.cpus),
        memory_mib=int(stored.get("memory_mib") or default.memory_mib),
        nics=tuple(NicSpec(mac=str(n.get("mac") or ""), network=str(n.get("network") or "default"),
                           addresses=tuple(str(a) for a in n.get("addresses") or ()))
                   for n in stored.get("nics") or []),
        guest_os=stored.get("guest_os"),
        settings=dict(machine.source.settings),
    )


def get_machine(vault: Vault, name: str, session: Session | None = None) -> MachineRow:
    def load(s: Session) -> MachineRow:
        m = s.scalar(
            select(MachineRow)
            .where(MachineRow.name == name)
            .options(*_LOAD)
        )
        if m is None:
            known = ", ".join(s.scalars(select(MachineRow.name).order_by(MachineRow.name))) or "none"
            raise NotFound(f"no machine named {name!r} (registered: {known})")
        return m

    if session is not None:
        return load(session)
    with vault.session() as s:
        return load(s)


def list_machines(vault: Vault) -> list[MachineRow]:
    with vault.session() as s:
        return list(
            s.scalars(
                select(MachineRow)
                .order_by(MachineRow.name)
                .options(*_LOAD)
            )
        )


#: the length of ``machines.state_reason``
STATE_REASON_MAX = 500


def set_state(vault: Vault, machine: MachineRow, state: str, reason: str = "") -> None:
    """``reason`` is cut to the column's 500 characters: PostgreSQL refuses a longer one (an
    error message can be), and a state change must not fail for its explanation."""
    if len(reason) > STATE_REASON_MAX:
        reason = reason[: STATE_REASON_MAX - 1] + "…"
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        assert row is not None
        row.state, row.state_reason = state, reason
    machine.state, machine.state_reason = state, reason


def source_context(vault: Vault) -> registry.SourceContext:
    """What source providers may use of the vault, as values (never the vault itself)."""
    from rehost.vault.agent_ca import DatabaseCAStore

    return registry.SourceContext(agents_dir=vault.root / "agents", digests=vault.cache,
                                  ca_store=DatabaseCAStore(vault, vault.root / "agents"))


def provider_for(machine: MachineRow, vault: Vault) -> SourceProvider:
    """The provider of the machine's source, built by its kind's plugin."""
    return registry.get(machine.source.kind).open(machine.source.settings, source_context(vault))
