"""Enabling and disabling replication of an item: the portal's word for what the CLI does
with ``replicate --policy --target --network-map`` and ``policy attach``.

Composed from the vault services; the only new piece is ``detach_policy`` (the CLI has no
way yet to stop continuous replication short of completing a migration).
"""

from __future__ import annotations

from rehost.vault import inventory, policies, targets
from rehost.vault.models import MachineRow
from rehost.vault.vault import Vault


def enable(vault: Vault, name: str, *, policy: str | None, target: str | None,
           network_map: dict[str, str]) -> MachineRow:
    """Attach the policy and the target; everything is checked before anything changes."""
    machine = inventory.get_machine(vault, name)
    mapping = targets.parse_network_map([f"{k}={v}" for k, v in network_map.items()])
    if policy:
        policies.get_policy(vault, policy)  # NotFound before the target is touched
    chosen = targets.target_of(vault, machine, target) if (target or mapping) else None
    if chosen is not None:
        targets.check_network_map(chosen, mapping)  # the chosen target's networks
    if policy:
        policies.attach(vault, name, policy)
    if chosen is not None:
        targets.assign(vault, machine, chosen, mapping)
    return inventory.get_machine(vault, name)


def detach_policy(vault: Vault, name: str) -> MachineRow:
    """Stop continuous replication: the scheduler skips items without a policy. Recovery
    points, the target and the state stay, so ``enable`` picks up where it left off."""
    machine = inventory.get_machine(vault, name)
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        assert row is not None
        row.policy_id = None
    return inventory.get_machine(vault, name)
