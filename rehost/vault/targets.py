"""Targets in the vault: registering, verifying, and choosing one for a machine."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from rehost.errors import AlreadyExists, InvalidState, NotFound, UsageError
from rehost.targets.base import VerifyReport
from rehost.targets.local import LocalSettings, LocalTarget
from rehost.vault.inventory import check_name
from rehost.vault.models import MachineRow, TargetRow
from rehost.vault.vault import Vault


def add_local_target(
    vault: Vault, name: str, path: Path, *, accel: str = "tcg", memory_mib: int = 256
) -> TargetRow:
    check_name(name, "target")
    if accel not in ("tcg", "kvm"):
        raise UsageError(f"--accel must be tcg or kvm, not {accel!r}")
    if not 64 <= memory_mib <= 1 << 20:
        raise UsageError("--memory-mib must be between 64 and 1048576")
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is not a folder")
    settings = LocalSettings(path=path, accel=accel, memory_mib=memory_mib)
    with vault.session() as s, s.begin():
        if s.scalar(select(TargetRow).where(TargetRow.name == name)) is not None:
            raise AlreadyExists(f"a target named {name!r} already exists")
        path.mkdir(parents=True, exist_ok=True)
        row = TargetRow(name=name, kind="local", settings=settings.to_json())
        s.add(row)
    return row


def get_target(vault: Vault, name: str) -> TargetRow:
    with vault.session() as s:
        row = s.scalar(select(TargetRow).where(TargetRow.name == name))
        if row is None:
            known = ", ".join(s.scalars(select(TargetRow.name))) or "none"
            raise NotFound(
                f"no target named {name!r} (targets: {known}; add one with rehost target add-local)"
            )
        return row


def list_targets(vault: Vault) -> list[TargetRow]:
    with vault.session() as s:
        return list(s.scalars(select(TargetRow).order_by(TargetRow.name)))


def provider(row: TargetRow) -> LocalTarget:
    if row.kind == "local":
        return LocalTarget(LocalSettings.from_json(row.settings))
    raise UsageError(f"target kind {row.kind!r} is not supported by this version")


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
        raise InvalidState("no target yet: add one with rehost target add-local NAME --path DIR")
    raise UsageError(f"{machine.name} has no target assigned: pass --target "
                     f"({', '.join(t.name for t in targets)})")


def assign(vault: Vault, machine: MachineRow, target: TargetRow, network_map: dict[str, str]) -> None:
    with vault.session() as s, s.begin():
        m = s.get(MachineRow, machine.id)
        assert m is not None
        m.target_id = target.id
        if network_map:
            m.network_map = network_map


def parse_network_map(items: list[str]) -> dict[str, str]:
    """``src=dst`` pairs; the destination must be a network the local target offers."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise UsageError(f"--network-map takes SOURCE=TARGET, not {item!r}")
        if dst not in ("production", "isolated", "none"):
            raise UsageError(f"target network {dst!r} does not exist (production, isolated, none)")
        out[src] = dst
    return out
