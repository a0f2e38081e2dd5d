"""A vault for the plan tests of the API and the dashboard: target ``t`` of kind ``memory`` (a
declared test double: it stages disks and emulates a boot, runs nothing), machines made of
small synthetic disks, each replicated once, and a token per role."""

from __future__ import annotations

from pathlib import Path

from rehost.api.tokens import create_token
from rehost.vault import inventory, protection, roots, targets
from rehost.vault.vault import Vault
from tests.api.portal import ROLES
from tests.targets.helpers import make_disk


def make_plan_vault(root: Path, machines: tuple[str, ...] = ("db", "web"),
                    unbootable: tuple[str, ...] = ()) -> dict[str, str]:
    """``unbootable``: machines whose disk has no boot signature (their test failover fails)."""
    vault = Vault.init(root / "vault")
    try:
        roots.allow_root(vault, root)  # the test's scripts and images, as an admin allows a folder
        targets.add_target(vault, "memory", "t", {"path": root / "target"})
        for name in machines:
            disk = make_disk(root / f"{name}.img", name, bootable=name not in unbootable)
            inventory.add_image_source(vault, name, [disk])
            protection.replicate(vault, name)
        return {role: create_token(vault, f"{role}-token", role)[1] for role in ROLES}
    finally:
        vault.close()
