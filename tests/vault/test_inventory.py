"""Registering machines through the source registry, and the MachineSpec the vault hands back."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import AlreadyExists, UsageError
from rehost.sources import image, registry
from rehost.spec import Firmware
from rehost.vault import agents, inventory, overview
from rehost.vault.models import SourceRow
from rehost.vault.vault import Vault
from tests.sources.test_discovery import ovf

MiB = 1 << 20


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.init(tmp_path / "vault")
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """An OVF export: descriptor plus one qcow2 disk."""
    folder = tmp_path / "export"
    folder.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "app-disk1.qcow2"), "16M"],
                   check=True)
    (folder / "app01.ovf").write_text(ovf())
    return folder / "app01.ovf"


def test_spec_of_gives_back_what_discovery_found(vault: Vault, exported: Path) -> None:
    found = image.discover("", image.ImageConfig(paths=(str(exported),)))
    machine = inventory.add_source(vault, "image", "", {"paths": [str(exported)]}).machine
    assert machine.name == "app01" and machine.source.kind == "image"
    back = inventory.spec_of(inventory.get_machine(vault, "app01"))
    assert back.id == machine.id and back.firmware == Firmware.UEFI and back.cpus == 4
    # every compared field (name, disks, firmware, CPUs, memory, NICs, OS) survives the round trip
    assert back == dataclasses.replace(found, id=machine.id)
    assert back.settings == found.settings == {"paths": [str(exported)]}


def test_the_old_spelling_registers_the_same_machine(vault: Vault, exported: Path) -> None:
    disk = exported.parent / "app-disk1.qcow2"
    a = inventory.add_source(vault, "image", "a", {"paths": [str(disk)]}).machine
    b = inventory.add_image_source(vault, "b", [disk])
    spec_a, spec_b = inventory.spec_of(a), inventory.spec_of(b)
    assert spec_a.disks == spec_b.disks and spec_a.settings == spec_b.settings
    assert (a.source.kind, a.source.settings, a.spec) == (b.source.kind, b.source.settings, b.spec)


def test_refusals_leave_the_vault_as_it_was(vault: Vault, exported: Path, tmp_path: Path) -> None:
    disk = exported.parent / "app-disk1.qcow2"
    inventory.add_image_source(vault, "vm", [disk])
    refusals: list[tuple[type[Exception], str, str, dict[str, object]]] = [
        (UsageError, "vsphere2", "x", {}),
        (UsageError, "image", "x", {"paths": [str(disk)], "colour": "blue"}),
        (UsageError, "image", "x", {"paths": [str(tmp_path / "nope.raw")]}),
        (UsageError, "image", "bad name!", {"paths": [str(disk)]}),
        (UsageError, "qemu", "q", {"qmp_socket": str(tmp_path / "no.sock")}),
        (UsageError, "physical", "p", {"expires": "9d"}),
        (AlreadyExists, "image", "vm", {"paths": [str(disk)]}),
        (AlreadyExists, "physical", "vm", {}),
    ]
    for error, kind, name, options in refusals:
        with pytest.raises(error):
            inventory.add_source(vault, kind, name, options)
    assert [m.name for m in inventory.list_machines(vault)] == ["vm"]
    assert not (vault.root / "agents").exists()  # no passphrase was issued for a refused machine


def test_a_physical_machine_is_registered_with_its_invitation(vault: Vault) -> None:
    done = inventory.add_source(vault, "physical", "srv1", {"expires": "30m", "port": 9000})
    assert done.invitation is not None and done.invitation.machine == "srv1"
    assert done.invitation.expires_in_s == 1800 and done.invitation.passphrase
    m = done.machine
    assert m.source.kind == agents.KIND == "physical" and m.disks == []
    assert m.state_reason == "waiting for its agent to register"
    assert m.source.settings == {"agent": "srv1", "port": 9000}
    assert agents.has_agent(m) and registry.capabilities(m.source.kind).disks_arrive_later
    with pytest.raises(UsageError, match="has not registered yet"):
        agents.sync_disks(vault, m)


def test_a_kind_this_version_does_not_know_still_lists(vault: Vault, exported: Path) -> None:
    """A vault written by a newer rehost (a source kind unknown here): listings and health
    still work, operations say why they cannot."""
    m = inventory.add_image_source(vault, "vm", [exported.parent / "app-disk1.qcow2"])
    with vault.session() as s, s.begin():
        s.get(SourceRow, m.source.id).kind = "hyperv-next"  # type: ignore[union-attr]
    [view] = overview.machine_views(vault)
    assert view["source"] == "hyperv-next" and view["agent"] is None
    with pytest.raises(UsageError, match="unknown source kind 'hyperv-next'"):
        inventory.provider_for(inventory.get_machine(vault, "vm"), vault)


def test_a_long_state_reason_is_cut_not_refused(vault: Vault, exported: Path) -> None:
    machine = inventory.add_source(vault, "image", "", {"paths": [str(exported)]}).machine
    reason = "cycle failed: " + "x" * 2000  # an error message can be this long
    inventory.set_state(vault, machine, "replicating", reason)  # PostgreSQL refused it whole
    back = inventory.get_machine(vault, "app01")
    assert back.state == "replicating" and len(back.state_reason) == inventory.STATE_REASON_MAX
    assert back.state_reason.startswith("cycle failed: xxx") and back.state_reason.endswith("…")
