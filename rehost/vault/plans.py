"""Recovery plans (issue 15): which machines fail over together, in which order, and what runs
between the groups. Pure vault state: running a plan is the plan job's business.

Groups are numbered from 1 and have no gaps (a group is only ever added right after the last
one), so "group 3" always means the third thing that starts; a machine belongs to at most one
plan, so two plans never fight over one machine's test copy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.replication.retention import parse_duration
from rehost.vault.inventory import check_name, get_machine, spec_of
from rehost.vault.models import MachineRow, PlanMachineRow, PlanRow
from rehost.vault.vault import Vault

ACTION_KINDS = ("pre", "post", "manual", "cleanup")
DEFAULT_TIMEOUT_S = 60


@dataclass
class Group:
    number: int
    machines: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """A plan as read from the vault: its groups in the order they start."""

    name: str
    groups: list[Group]

    @property
    def machines(self) -> list[str]:
        return [m for g in self.groups for m in g.machines]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "groups": [
                {"group": g.number, "machines": g.machines, "actions": g.actions} for g in self.groups
            ],
        }


def _load(s: Session, name: str) -> PlanRow:
    row = s.scalar(
        select(PlanRow).where(PlanRow.name == name)
        .options(selectinload(PlanRow.members).selectinload(PlanMachineRow.machine))
    )
    if row is None:
        known = ", ".join(s.scalars(select(PlanRow.name).order_by(PlanRow.name))) or "none"
        raise NotFound(f"no plan named {name!r} (plans: {known})")
    return row


def _group_count(row: PlanRow) -> int:
    groups: list[int] = [m.group for m in row.members] + [int(a["group"]) for a in row.actions]
    return max([*groups, 0])


def _check_group(row: PlanRow, group: int) -> None:
    """Group numbers are 1.. the last group, or one more (which starts a new group)."""
    last = _group_count(row)
    if not 1 <= group <= last + 1:
        raise UsageError(
            f"plan {row.name!r} has {last} group(s): group {group} is not valid; use 1 to {last + 1} "
            f"({last + 1} starts a new group)"
        )


def _to_plan(row: PlanRow) -> Plan:
    groups = [Group(n) for n in range(1, _group_count(row) + 1)]
    for m in sorted(row.members, key=lambda m: m.position):
        groups[m.group - 1].machines.append(m.machine.name)
    for a in row.actions:
        groups[a["group"] - 1].actions.append(dict(a))
    return Plan(row.name, groups)


def create(vault: Vault, name: str) -> Plan:
    check_free(vault, name)
    with vault.session() as s, s.begin():
        s.add(PlanRow(name=name, actions=[]))
    return Plan(name, [])


def add_machine(vault: Vault, name: str, machine: str, group: int) -> Plan:
    """Put MACHINE in group GROUP of the plan; refused when it is in a plan already (this one
    included: moving it is remove, then add)."""
    with vault.session() as s, s.begin():
        row = _load(s, name)
        m = get_machine(vault, machine, session=s)
        taken = s.scalar(select(PlanMachineRow).where(PlanMachineRow.machine_id == m.id))
        if taken is not None:
            other = s.scalar(select(PlanRow.name).where(PlanRow.id == taken.plan_id))
            where = f"group {taken.group} of this plan" if taken.plan_id == row.id else f"plan {other!r}"
            raise AlreadyExists(f"machine {machine!r} is already in {where}")
        _check_group(row, group)
        position = (s.scalar(select(func.max(PlanMachineRow.position))
                             .where(PlanMachineRow.plan_id == row.id)) or 0) + 1
        row.members.append(PlanMachineRow(machine_id=m.id, machine=m, group=group, position=position))
        s.flush()
        return _to_plan(row)


def remove_machine(vault: Vault, name: str, machine: str) -> Plan:
    with vault.session() as s, s.begin():
        row = _load(s, name)
        member = next((m for m in row.members if m.machine.name == machine), None)
        if member is None:
            raise NotFound(f"machine {machine!r} is not in plan {name!r}")
        row.members.remove(member)
        s.flush()
        return _to_plan(row)


def parse_timeout(text: str | None) -> int:
    if text is None:
        return DEFAULT_TIMEOUT_S
    seconds = int(parse_duration(text).total_seconds())
    if seconds <= 0:
        raise UsageError(f"timeout {text!r} must be positive")
    return seconds


def add_action(
    vault: Vault, name: str, group: int, kind: str, *, script: str | None = None,
    text: str | None = None, timeout_s: int = DEFAULT_TIMEOUT_S,
) -> Plan:
    """A pre- or post-action runs SCRIPT before or after the group's machines start (killed
    after ``timeout_s``); a cleanup action runs SCRIPT after a test failover's cleanup removed
    the group's test machines (undo what the post-actions changed outside them); a manual
    action waits for an operator to confirm TEXT was done."""
    if kind not in ACTION_KINDS:
        raise UsageError(f"action kind {kind!r} is not one of {', '.join(ACTION_KINDS)}")
    action: dict[str, Any] = {"group": group, "kind": kind}
    if kind == "manual":
        if not text or not text.strip() or script:
            raise UsageError("a manual action needs the text the operator must confirm, and no script")
        action["text"] = text.strip()
    else:
        if not script or not script.strip() or text:
            raise UsageError(f"a {kind}-action needs a script (a path on the rehost host), and no text")
        if timeout_s <= 0:
            raise UsageError(f"timeout {timeout_s}s must be positive")
        action.update(script=script, timeout_s=timeout_s)
    with vault.session() as s, s.begin():
        row = _load(s, name)
        _check_group(row, group)
        if any(a == action for a in row.actions):
            raise AlreadyExists(f"plan {name!r} already has this {kind} action in group {group}")
        row.actions = [*row.actions, action]  # a new list: the JSON column sees the change
        s.flush()
        return _to_plan(row)


def show(vault: Vault, name: str) -> Plan:
    with vault.session() as s:
        return _to_plan(_load(s, name))


def list_plans(vault: Vault) -> list[Plan]:
    with vault.session() as s:
        names = list(s.scalars(select(PlanRow.name).order_by(PlanRow.name)))
        return [_to_plan(_load(s, n)) for n in names]


def delete(vault: Vault, name: str) -> None:
    """Forget the plan; its machines and their replication are untouched."""
    with vault.session() as s, s.begin():
        s.delete(_load(s, name))


def plan_of(vault: Vault, machine: MachineRow) -> str | None:
    """The plan a machine belongs to, if any (a machine being removed must leave it first)."""
    with vault.session() as s:
        return s.scalar(
            select(PlanRow.name).join(PlanMachineRow).where(PlanMachineRow.machine_id == machine.id)
        )


def startup_groups(vault: Vault, machines: list[str]) -> list[list[str]]:
    """Machines grouped by their vApp startup order (OVF ``StartupSection``, kept in each
    machine's source settings): lower orders first, equal orders together; machines with no
    order (0 or none) start last, together, as vSphere starts them after the ordered ones."""
    ordered: dict[tuple[int, ...], list[str]] = {}
    unordered: list[str] = []
    for m in machines:
        startup = spec_of(get_machine(vault, m)).settings.get("startup")
        order = tuple(startup["order"]) if startup else ()
        if not order or 0 in order:
            unordered.append(m)
        else:
            ordered.setdefault(order, []).append(m)
    groups = [ordered[k] for k in sorted(ordered)]
    return groups + ([unordered] if unordered else [])


def create_from_startup(vault: Vault, name: str, machines: list[str]) -> Plan:
    """A plan whose groups follow the vApp's startup order (the vApp becomes a plan)."""
    groups = startup_groups(vault, machines)
    create(vault, name)
    for number, members in enumerate(groups, start=1):
        for m in members:
            add_machine(vault, name, m, number)
    return show(vault, name)


def check_free(vault: Vault, name: str) -> None:
    """Refuse a plan name that is taken or invalid, before anything else is made."""
    check_name(name, "plan")
    with vault.session() as s:
        if s.scalar(select(PlanRow).where(PlanRow.name == name)) is not None:
            raise AlreadyExists(f"a plan named {name!r} already exists")
