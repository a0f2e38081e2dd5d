"""rehost failover [--test] and its readiness step, as a user runs it: a failing requirement
ends the command with one line naming it and its fix, before anything is made on the target
(the local QEMU target here, and no QEMU starts); --force-readiness goes with --reason."""

from __future__ import annotations

from pathlib import Path

from rehost.vault import inventory, protection, targets
from rehost.vault.vault import Vault
from tests.cli_helpers import rehost
from tests.inspections import guest, seed

MiB = 1 << 20


def test_a_failing_requirement_ends_the_test_failover_with_its_fix(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x01" * 65536)
    vault = Vault.init(tmp_path / "vault")
    try:
        targets.add_local_target(vault, "here", tmp_path / "target")
        inventory.add_image_source(vault, "vm", [disk])
        point = protection.replicate(vault, "vm").point.id
        seed(vault, "vm", point, guest(modules=("virtio_net",)))  # no virtio_blk, no virtio_pci
    finally:
        vault.close()
    v = tmp_path / "vault"

    r = rehost(v, "failover", "vm", "--test", check=False)
    assert r.code == 1
    line = r.err.strip().splitlines()[-1]
    assert line.startswith("rehost: error: test-failover of vm failed: Check readiness for the target: "
                           "vm is not ready for target here")
    assert "virtio_blk driver" in line and "virtio_pci driver" in line and "update-initramfs" in line
    assert "rehost failover vm --test --force-readiness --reason TEXT" in line
    assert not (tmp_path / "target" / "vm-test").exists()
    assert rehost(v, "machines", "--json").json()[0]["state"] == "protected"

    r = rehost(v, "failover", "vm", "--test", "--reason", "why", check=False)
    assert r.code != 0 and "--reason goes with --force-readiness" in r.err
    r = rehost(v, "failover", "vm", "--force-readiness", check=False)
    assert r.code != 0 and "--force-readiness needs --reason TEXT" in r.err
