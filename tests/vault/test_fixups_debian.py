"""Fix-ups on a real Debian 12 guest that would not boot on the local (KVM) target: its
initramfs has no disk driver (MODULES=dep), it has a static address and names its root
/dev/vda1, and it carries the rehost agent. rehost readiness says it will not boot; the test
failover is refused; with ``--fix-up all`` the copy gets virtio_blk in its initramfs (read back
from the copy's disk with lsinitramfs, not from the job's word), DHCP, fstab by UUID and no
agent, and it boots and takes the address QEMU's DHCP hands out. The source disk and the
recovery point are unchanged, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from rehost.guest.config_files import parse_fstab
from rehost.jobs.runner import get_job
from rehost.testkit.debian import copy_image, initramfs_kernel_modules
from rehost.testkit.diskimage import mounted_root
from rehost.testkit.tinylinux import read_file
from rehost.vault.vault import Vault
from tests.cli_helpers import qemu_img_compare, rehost
from tests.conftest import UNREADY_ADDRESS
from tests.testkit.test_debian import fs_uuid

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_qemu")]

AGENT_UNIT = "/etc/systemd/system/rehost-agent.service"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _with_agent(image: Path) -> None:
    """What an installed rehost agent leaves on a machine (the binary, its unit, enabled)."""
    with mounted_root(image) as root:
        (root / "usr/local/bin/rehost-agent").write_text("#!/bin/sh\nexit 0\n")
        (root / AGENT_UNIT.lstrip("/")).write_text("[Service]\nExecStart=/usr/local/bin/rehost-agent\n"
                                                   "[Install]\nWantedBy=multi-user.target\n")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "rehost-agent.service").symlink_to(AGENT_UNIT)


def test_fix_ups_make_an_unbootable_guest_boot_on_dhcp(tmp_path: Path, debian_unready: Path) -> None:
    pytest.importorskip("guestfs", reason="python3-guestfs is not installed (run scripts/install)")
    source = copy_image(debian_unready, tmp_path / "web.img")
    _with_agent(source)
    digest = _sha256(source)
    vault = tmp_path / "vault"
    env = {"REHOST_READINESS_INSPECT": "on"}  # tests/conftest.py turns it off for other tests
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "kvm", "--path", str(tmp_path / "target"), "--memory-mib", "512")
    rehost(vault, "source", "add-image", "web", str(source))
    rehost(vault, "replicate", "web")

    report = rehost(vault, "readiness", "web", "--json", env=env).json()
    print(f"\ninspection of the point: {report['inspection']['seconds']:.1f}s")
    status = {r["name"]: r["status"] for r in report["requirements"]}
    assert report["status"] == "fail" and status["virtio_blk driver"] == "fail"
    assert status["DHCP on the primary NIC"] == status["fstab by UUID or LABEL"] == "warn"
    assert report["inspection"]["agents"]["rehost-agent"] is True
    said = rehost(vault, "readiness", "web", env=env).out  # from the point's cached inspection
    assert "on the copy, not the source: rehost failover web [--test] --fix-up initramfs,fstab,dhcp" in said

    refused = rehost(vault, "failover", "web", "--test", check=False, env=env)
    assert refused.code != 0 and "web is not ready for target kvm" in refused.err
    assert "virtio_blk driver" in refused.err and "or on the copy: --fix-up initramfs" in refused.err
    assert not (tmp_path / "target" / "web-test").exists()  # nothing was made

    try:
        _check_the_fixed_copy(tmp_path, vault, env, source, digest)
    finally:  # never leave the test machine running
        rehost(vault, "failover", "web", "--cleanup", check=False)
    assert not (vault / "fixups" / "web-test").exists()


def _check_the_fixed_copy(tmp_path: Path, vault: Path, env: dict[str, str], source: Path,
                          digest: str) -> None:
    r = rehost(vault, "failover", "web", "--test", "--fix-up", "all", "--boot-marker", r"REHOST-NET ip=\S+",
               "--json", env=env)
    job = r.json()
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}
    print(f"fix-up step: {steps['fix_up']['detail']}")
    assert "left to the fix-ups: virtio_blk driver (initramfs)" in steps["readiness"]["detail"]
    v = Vault.open(vault)
    try:
        outputs = get_job(v, job["id"]).outputs
    finally:
        v.engine.dispose()
    assert outputs["boot_line"].startswith("REHOST-NET ip=10.0.2.15"), outputs["boot_line"]
    assert UNREADY_ADDRESS.split("/")[0] not in outputs["boot_line"]
    done = {f["name"]: f for f in outputs["fixups"]["fixups"]}
    assert done["initramfs"]["changed"] and "virtio_blk" in done["initramfs"]["detail"]
    assert done["dhcp"]["changed"] and done["fstab"]["changed"] and done["remove-agents"]["changed"]
    assert not done["serial-console"]["changed"]  # the guest has console=ttyS0 already
    assert outputs["fixups"]["readiness_after"]["status"] == "pass"

    # read the copy back: the test machine's disk (an overlay chain, in use: -U)
    meta = json.loads((tmp_path / "target" / "web-test" / "vm.json").read_text())
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", meta["disks"][0], str(copy)], check=True)
    with mounted_root(copy):
        pass  # a read-write mount replays the journal of the running guest's file system (on this copy)
    assert {"virtio_blk", "virtio_net"} <= initramfs_kernel_modules(copy)
    interfaces = read_file(copy, "/etc/network/interfaces").decode()
    assert "iface eth0 inet dhcp" in interfaces and "address" not in interfaces
    uuid = fs_uuid(copy)
    [root_entry] = parse_fstab(read_file(copy, "/etc/fstab").decode())
    assert (root_entry.spec, root_entry.mountpoint) == (f"UUID={uuid}", "/")
    assert f"root=UUID={uuid} " in read_file(copy, "/boot/extlinux/extlinux.conf").decode()
    with mounted_root(copy, readonly=True) as root:
        assert not (root / "usr/local/bin/rehost-agent").exists() and not (root / AGENT_UNIT[1:]).exists()
        assert not os.path.lexists(root / "etc/systemd/system/multi-user.target.wants/rehost-agent.service")
        assert "inet static" in (root / "var/lib/rehost/fixups/etc/network/interfaces").read_text()

    # never the source, never the point
    assert _sha256(source) == digest
    exported = tmp_path / "point.raw"
    rehost(vault, "export", "web", "--output", str(exported))
    assert qemu_img_compare(source, exported)
    assert "virtio_blk" not in initramfs_kernel_modules(exported)
