"""The vSphere source end to end: a VM on vcsim (real SOAP, real /folder HTTP, real disk bytes)
protected through ``rehost source add vsphere`` and replicated by the CLI in a separate process.

Changed-block tracking comes from the CBT shim, a declared test double (vcsim has none): what
is tested is rehost's side of it (snapshot cycle, changeIds kept in points, reading only the
areas named, falling back when a changeId is refused, cleaning up snapshots).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rehost.testkit.vcsim.vm import PlacedVm
from tests.cli_helpers import REHOST, REPO, rehost
from tests.sources.conftest import VsphereLab, snapshot_names

pytestmark = pytest.mark.slow

ENV = {"REHOST_VSPHERE_PASSWORD": "vcsim-takes-any-password"}


def _register(vault: Path, lab: VsphereLab, vm: PlacedVm, name: str = "web") -> str:
    rehost(vault, "init")
    r = rehost(vault, "source", "add", "vsphere", name, "--host", lab.shim.host, "--user",
               "administrator@vsphere.local", "--vm", vm.moref, "--thumbprint", lab.shim.thumbprint, env=ENV)
    return r.out


def _cycle(vault: Path, name: str = "web") -> dict[str, Any]:
    out: dict[str, Any] = rehost(vault, "replicate", name, "--json", env=ENV).json()
    return out


def _write(flat: Path, writes: list[tuple[int, int]], seed: int) -> int:
    """Write random bytes at (offset, length) into the VM's disk file, as a guest would."""
    with open(flat, "r+b") as f:
        for i, (offset, length) in enumerate(writes):
            f.seek(offset)
            f.write(os.urandom(length) if seed else bytes(length))
            del i
    return sum(n for _, n in writes)


def _export_equals(vault: Path, point: str, expected: Path, tmp: Path) -> bool:
    out = tmp / f"export-{point}.raw"
    rehost(vault, "export", "web", "--point", point, "--output", str(out), env=ENV)
    same = subprocess.run(["cmp", "-s", str(out), str(expected)]).returncode == 0
    out.unlink()
    return same


def test_register_discovers_the_vm(vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path) -> None:
    vault = tmp_path / "v"
    out = _register(vault, vcsim, vsphere_vm)
    assert "2 CPU(s)" in out and "256 MiB" in out and "1 NIC(s)" in out, out
    m = next(m for m in rehost(vault, "machines", "--json").json() if m["name"] == "web")
    assert m["source"] == "vsphere"
    # the password is not kept anywhere in the vault
    for f in vault.rglob("*"):
        if f.is_file():
            assert ENV["REHOST_VSPHERE_PASSWORD"].encode() not in f.read_bytes(), f
    # an unknown VM is refused, with the inventory to choose from
    r = rehost(vault, "source", "add", "vsphere", "x", "--host", vcsim.shim.host, "--user", "u",
               "--vm", "nope", "--thumbprint", vcsim.shim.thumbprint, env=ENV, check=False)
    assert r.code != 0 and "no VM 'nope'" in r.out + r.err and vsphere_vm.name in r.out + r.err
    # a wrong thumbprint is refused before anything is sent
    r = rehost(vault, "source", "add", "vsphere", "y", "--host", vcsim.shim.host, "--user", "u",
               "--vm", vsphere_vm.moref, "--thumbprint", "00" * 20, env=ENV, check=False)
    assert r.code != 0 and "thumbprint" in (r.out + r.err).lower()


def test_three_cycles_read_only_what_changed_and_every_point_is_exact(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    flat = vsphere_vm.flat
    size = flat.stat().st_size
    expected: list[tuple[str, Path]] = []

    first = _cycle(vault)
    assert any("turned it on" in n for n in first["notes"]), first["notes"]
    shutil.copyfile(flat, tmp_path / "p0.raw")
    expected.append((first["point"], tmp_path / "p0.raw"))
    assert first["bytes_read"] < size  # only the allocated areas (`*`), not the whole disk

    rounds = [
        [(4096 * 7, 4096), (5 << 20, 65536), (size - 8192, 4096)],
        [(1 << 20, 4096), (9 << 20, 12288)],
    ]
    for n, writes in enumerate(rounds, 1):
        written = _write(flat, writes, seed=n)
        r = _cycle(vault)
        assert r["notes"] == [], r["notes"]
        assert r["bytes_read"] == written, (r["bytes_read"], written)
        shutil.copyfile(flat, tmp_path / f"p{n}.raw")
        expected.append((r["point"], tmp_path / f"p{n}.raw"))

    for point, image in expected:
        assert _export_equals(vault, point, image, tmp_path), point
    assert snapshot_names(vcsim, vsphere_vm.moref) == []
    # the shim really was asked, with the parent's changeId (not `*`) after the first cycle
    assert vcsim.shim.calls.count("QueryChangedDiskAreas") >= 5


def test_killed_cycle_leaves_a_snapshot_that_the_next_cycle_removes(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    _cycle(vault)
    _write(vsphere_vm.flat, [(2 << 20, 1 << 20)], seed=1)

    env = {**os.environ, "REHOST_VAULT": "", "COLUMNS": "200", **ENV}
    reads = vcsim.shim.folder_reads
    vcsim.shim.read_delay = 0.5
    try:
        proc = subprocess.Popen([*REHOST, "--vault", str(vault), "replicate", "web"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while vcsim.shim.folder_reads == reads and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the cycle ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        vcsim.shim.read_delay = 0.0
    left = snapshot_names(vcsim, vsphere_vm.moref)
    assert len(left) == 1 and left[0].startswith("rehost-cycle-"), left

    r = _cycle(vault)
    assert any("removed 1 snapshot(s)" in n for n in r["notes"]), r["notes"]
    assert snapshot_names(vcsim, vsphere_vm.moref) == []
    assert _export_equals(vault, r["point"], vsphere_vm.flat, tmp_path)


def test_cbt_reset_falls_back_to_hash_diff_and_says_why(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    first = _cycle(vault)
    written = _write(vsphere_vm.flat, [(3 << 20, 8192)], seed=2)
    vcsim.shim.reset()  # the host forgets every changeId (what a CBT reset does)

    r = _cycle(vault)
    assert any("refused changeId" in n and "hash-diff" in n for n in r["notes"]), r["notes"]
    assert r["bytes_read"] > 10 * written  # every allocated area was read again ...
    assert r["changed_bytes"] == written  # ... and only the difference stored
    assert _export_equals(vault, r["point"], vsphere_vm.flat, tmp_path)
    machine = next(m for m in rehost(vault, "machines", "--json").json() if m["name"] == "web")
    assert "refused changeId" in json.dumps(machine), machine
    assert first["point"] != r["point"]

    # and the cycle after that has a changeId the host knows again: back to CBT
    written = _write(vsphere_vm.flat, [(6 << 20, 4096)], seed=3)
    r = _cycle(vault)
    assert r["notes"] == [] and r["bytes_read"] == written


def test_failover_shuts_the_vm_down_then_boots_the_final_point(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (run scripts/install)")
    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    # up to 512 MiB per machine here: the VM's own 256 MiB is what it must get
    rehost(vault, "target", "add-local", "here", "--path", str(tmp_path / "target"), "--memory-mib", "512")
    rehost(vault, "replicate", "web", "--target", "here", env=ENV)
    _write(vsphere_vm.flat, [(40 << 20, 4096)], seed=4)  # written after the last cycle

    r = rehost(vault, "failover", "web", "--shutdown-source", "--json", env=ENV).json()
    assert r["state"] == "succeeded", r
    steps = {s["name"]: s for s in r["steps"]}
    assert steps["shutdown_source"]["state"] == "succeeded", steps["shutdown_source"]
    assert "shut down through VMware Tools" in steps["shutdown_source"]["detail"]
    assert steps["final_sync"]["state"] == "succeeded", steps["final_sync"]
    assert "REHOST-BOOT-OK" in steps["verify_boot"]["detail"], steps["verify_boot"]
    # the guest reports the machine it runs on: the VM's CPUs, memory and MAC (its spec on
    # vSphere: 2 CPUs, 256 MiB, one NIC), not the local target's defaults
    console = (tmp_path / "target" / "web" / "console.log").read_text(errors="replace")
    seen = re.search(r"REHOST-MACHINE cpus=(\d+) memory_mib=(\d+) macs=(\S+)", console)
    assert seen, console[-2000:]
    assert (int(seen[1]), int(seen[2]), seen[3]) == (2, 256, vsphere_vm.mac.lower()), seen[0]
    # the VM is off on vSphere, no snapshot is left, and the final point holds the late write
    from tests.sources.conftest import power_state

    assert power_state(vcsim, vsphere_vm.moref) == "poweredOff"
    assert snapshot_names(vcsim, vsphere_vm.moref) == []
    last = rehost(vault, "points", "web", "--json").json()[-1]["id"]
    assert _export_equals(vault, last, vsphere_vm.flat, tmp_path)
    rehost(vault, "complete", "web", env=ENV)


def test_failed_cycle_removes_its_snapshot_and_app_consistency_without_tools_says_so(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    vcsim.shim.fail_reads = True
    try:
        r = rehost(vault, "replicate", "web", env=ENV, check=False)
    finally:
        vcsim.shim.fail_reads = False
    assert r.code != 0 and "HTTP 503" in r.out + r.err, r
    assert snapshot_names(vcsim, vsphere_vm.moref) == []  # removed although the cycle failed

    out: dict[str, Any] = rehost(vault, "replicate", "web", "--app-consistent", "--json", env=ENV).json()
    assert out["consistency"] == "crash-consistent"
    assert any("VMware Tools are not running" in n for n in out["notes"]), out["notes"]
    assert _export_equals(vault, out["point"], vsphere_vm.flat, tmp_path)


def test_two_disks_keep_their_own_change_ids(vcsim: VsphereLab, tiny_image: Path, tmp_path: Path) -> None:
    from rehost.testkit.vcsim.vm import create_vm

    data = tmp_path / "data.raw"
    with open(data, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(1 << 20))
    vm = create_vm(vcsim.vcsim, tiny_image, "twodisks", data_disks=(data,))
    vcsim.shim.track(vm.moref, vm.device_key, vm.file_name, vm.flat)
    key1, name1, flat1 = vm.data_disks[0]
    vcsim.shim.track(vm.moref, key1, name1, flat1)
    vault = tmp_path / "v"
    out = _register(vault, vcsim, vm)
    assert "2 disk(s)" in out, out
    _cycle(vault)
    written = _write(flat1, [(6 << 20, 8192)], seed=5)  # only the data disk changes
    r = _cycle(vault)
    assert r["notes"] == [] and r["bytes_read"] == written, r
    points = rehost(vault, "points", "web", "--json").json()
    assert len(points) == 2
    for index, flat in ((0, vm.flat), (1, flat1)):
        got = tmp_path / f"d{index}.raw"
        rehost(vault, "export", "web", "--disk", str(index), "--output", str(got), env=ENV)
        assert subprocess.run(["cmp", "-s", str(got), str(flat)]).returncode == 0, index


def test_cbt_turned_off_behind_our_back_is_turned_on_again_and_said(
    vcsim: VsphereLab, vsphere_vm: PlacedVm, tmp_path: Path
) -> None:
    import ssl

    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    vault = tmp_path / "v"
    _register(vault, vcsim, vsphere_vm)
    _cycle(vault)
    # someone turns CBT off (through the same host, so the shim sees it: its changeIds go)
    si = SmartConnect(host="127.0.0.1", port=vcsim.shim.port, user="u", pwd="p",
                      sslContext=ssl._create_unverified_context())
    try:
        task = vim.VirtualMachine(vsphere_vm.moref, si._stub).ReconfigVM_Task(
            vim.vm.ConfigSpec(changeTrackingEnabled=False))
        while task.info.state not in ("success", "error"):
            time.sleep(0.05)
    finally:
        Disconnect(si)
    written = _write(vsphere_vm.flat, [(7 << 20, 4096)], seed=6)
    r = _cycle(vault)
    assert any("tracking was off" in n for n in r["notes"]), r["notes"]
    assert r["bytes_read"] > 10 * written and r["changed_bytes"] == written
    assert _export_equals(vault, r["point"], vsphere_vm.flat, tmp_path)
    written = _write(vsphere_vm.flat, [(8 << 20, 4096)], seed=7)
    r = _cycle(vault)  # tracked again from the snapshot that turned it on
    assert r["notes"] == [] and r["bytes_read"] == written
