"""Recovery plans as vault state: groups in order without gaps, a machine in one plan only,
actions per group, and errors that say what is wrong."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.vault import inventory, plans
from rehost.vault.vault import Vault


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.init(tmp_path / "vault")
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    for name in ("db", "web1", "web2"):
        inventory.add_image_source(v, name, [disk])
    try:
        yield v
    finally:
        v.close()


def test_groups_machines_and_actions(vault: Vault) -> None:
    plans.create(vault, "shop")
    plans.add_machine(vault, "shop", "db", 1)
    plans.add_action(vault, "shop", 1, "post", script="/bin/true", timeout_s=5)
    plans.add_machine(vault, "shop", "web1", 2)
    plans.add_machine(vault, "shop", "web2", 2)
    plans.add_action(vault, "shop", 2, "manual", text="check the shop's front page")
    p = plans.show(vault, "shop")
    assert p.to_json() == {"name": "shop", "groups": [
        {"group": 1, "machines": ["db"],
         "actions": [{"group": 1, "kind": "post", "script": "/bin/true", "timeout_s": 5}]},
        {"group": 2, "machines": ["web1", "web2"],
         "actions": [{"group": 2, "kind": "manual", "text": "check the shop's front page"}]},
    ]}
    assert p.machines == ["db", "web1", "web2"]
    assert [q.name for q in plans.list_plans(vault)] == ["shop"]
    plans.delete(vault, "shop")
    assert plans.list_plans(vault) == []
    plans.create(vault, "again")
    plans.add_machine(vault, "again", "db", 1)  # deleting a plan frees its machines


def test_errors_name_what_is_wrong(vault: Vault) -> None:
    plans.create(vault, "a")
    plans.create(vault, "b")
    with pytest.raises(AlreadyExists, match="plan named 'a'"):
        plans.create(vault, "a")
    with pytest.raises(UsageError, match="plan name"):
        plans.create(vault, "no spaces")
    with pytest.raises(NotFound, match="no machine named 'nope'"):
        plans.add_machine(vault, "a", "nope", 1)
    with pytest.raises(NotFound, match=r"no plan named 'c' \(plans: a, b\)"):
        plans.add_machine(vault, "c", "db", 1)
    with pytest.raises(UsageError, match=r"has 0 group.*group 2 is not valid; use 1 to 1"):
        plans.add_machine(vault, "a", "db", 2)
    plans.add_machine(vault, "a", "db", 1)
    with pytest.raises(AlreadyExists, match="'db' is already in group 1 of this plan"):
        plans.add_machine(vault, "a", "db", 2)
    with pytest.raises(AlreadyExists, match="'db' is already in plan 'a'"):
        plans.add_machine(vault, "b", "db", 1)
    with pytest.raises(UsageError, match="group 0 is not valid"):
        plans.add_action(vault, "a", 0, "pre", script="/bin/true")
    with pytest.raises(UsageError, match="needs a script"):
        plans.add_action(vault, "a", 1, "pre")
    with pytest.raises(UsageError, match="needs the text"):
        plans.add_action(vault, "a", 1, "manual", text=" ")
    plans.add_action(vault, "a", 1, "pre", script="/bin/true")
    with pytest.raises(AlreadyExists, match="already has this pre action in group 1"):
        plans.add_action(vault, "a", 1, "pre", script="/bin/true")
    with pytest.raises(UsageError, match="not a duration"):
        plans.parse_timeout("soon")
    assert plans.parse_timeout("2m") == 120
    plans.remove_machine(vault, "a", "db")
    plans.add_machine(vault, "b", "db", 1)
