"""Sources and machines: registering them and looking them up by name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.sources import image
from rehost.sources.base import SourceProvider
from rehost.vault.models import DiskRow, MachineRow, SourceRow
from rehost.vault.vault import Vault

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


def add_image_source(vault: Vault, name: str | None, paths: Sequence[Path]) -> MachineRow:
    """Register a machine made of image files (or an OVA/OVF) as a source of its own.

    Everything is validated before anything is written, so a bad input leaves the vault as
    it was.
    """
    ovf_name, images = image.discover(paths)
    name = check_name(name or ovf_name or "")
    with vault.session() as s, s.begin():
        if s.scalar(select(MachineRow).where(MachineRow.name == name)) is not None:
            raise AlreadyExists(f"a machine named {name!r} is already registered")
        if s.scalar(select(SourceRow).where(SourceRow.name == name)) is not None:
            raise AlreadyExists(f"a source named {name!r} is already registered")
        src = SourceRow(name=name, kind="image", settings={"paths": [str(p) for p in paths]})
        m = MachineRow(name=name, source=src, state="registered")
        m.disks = [
            DiskRow(
                index=i,
                path=str(img.path.absolute()),
                format=img.format,
                offset=img.offset,
                length=img.length,
                size=img.virtual_size,
            )
            for i, img in enumerate(images)
        ]
        s.add_all([src, m])
    return get_machine(vault, name)


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


def set_state(vault: Vault, machine: MachineRow, state: str, reason: str = "") -> None:
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        assert row is not None
        row.state, row.state_reason = state, reason
    machine.state, machine.state_reason = state, reason


def add_qemu_source(
    vault: Vault, name: str, qmp_socket: Path, guest_agent: Path | None = None, granularity: int | None = None
) -> MachineRow:
    """Register a running QEMU (or qemu-storage-daemon): its disks are discovered over QMP."""
    from rehost.sources import qemu

    check_name(name)
    if guest_agent is not None and not guest_agent.exists():
        raise UsageError(f"guest agent socket {guest_agent} does not exist")
    disks = qemu.discover(qmp_socket)
    if not disks:
        raise UsageError(f"the QEMU behind {qmp_socket} has no writable disk to replicate")
    settings: dict[str, object] = {"qmp_socket": str(Path(qmp_socket).absolute())}
    if guest_agent is not None:
        settings["guest_agent"] = str(guest_agent.absolute())
    if granularity is not None:
        qemu.QemuSource(qmp_socket, granularity=granularity)  # validates it
        settings["granularity"] = granularity
    with vault.session() as s, s.begin():
        if s.scalar(select(MachineRow).where(MachineRow.name == name)) is not None:
            raise AlreadyExists(f"a machine named {name!r} is already registered")
        if s.scalar(select(SourceRow).where(SourceRow.name == name)) is not None:
            raise AlreadyExists(f"a source named {name!r} is already registered")
        src = SourceRow(name=name, kind="qemu", settings=settings)
        m = MachineRow(name=name, source=src, state="registered")
        m.disks = [DiskRow(index=d.index, path=d.ref, format="qemu", size=d.size) for d in disks]
        s.add_all([src, m])
    return get_machine(vault, name)


def provider_for(machine: MachineRow, vault: Vault) -> SourceProvider:
    if machine.source.kind == "image":
        return image.ImageSource()
    if machine.source.kind == "qemu":
        from rehost.guest.agent import GuestAgent
        from rehost.sources.qemu import QemuSource

        sock = machine.source.settings.get("guest_agent")
        return QemuSource.from_settings(
            machine.source.settings, GuestAgent(Path(sock), timeout=10) if sock else None
        )
    if machine.source.kind == "agent":
        from rehost.sources.physical import PhysicalSource
        from rehost.vault.agents import authority

        return PhysicalSource.from_settings(machine.source.settings, authority(vault), vault.cache)
    raise UsageError(f"source kind {machine.source.kind!r} is not supported by this version")
