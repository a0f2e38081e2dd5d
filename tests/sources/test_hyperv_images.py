"""Hyper-V inputs through the CLI, as a user would: a checkpoint chain (``.avhdx``) and a VHDX
whose log was not replayed. Each export is judged by ``qemu-img compare`` against the test's
own record of what it wrote."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rehost.disks import vhdx_chain
from rehost.errors import UsageError
from rehost.sources.image_hyperv import export_disks
from rehost.testkit.vhdx_chain import MIB, Layer, expected, layers_from_raw, write_chain, write_vhdx
from tests.cli_helpers import qemu_img_compare, rehost

SIZE = 4 * MIB
LAYERS = [
    Layer({0: b"A" * MIB, 2 * MIB: b"B" * 65536}),
    Layer({4096: b"C" * 4096, 3 * MIB: b"D" * MIB}),
    Layer({8192: b"E" * 512, 2 * MIB + 512: b"F" * 512}),
]


def test_a_checkpoint_chain_replicates_and_exports_its_merged_content(tmp_path: Path) -> None:
    paths = write_chain(tmp_path, SIZE, LAYERS)
    want = tmp_path / "want.raw"
    want.write_bytes(expected(SIZE, LAYERS))
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add", "image", "hv", str(paths[-1]))
    disk = rehost(vault, "machines", "--json").json()[0]
    point = rehost(vault, "replicate", "hv", "--json").json()
    out = tmp_path / "out.raw"
    rehost(vault, "export", "hv", "--point", "latest", "--output", str(out))
    assert qemu_img_compare(out, want)
    assert point["point"], disk
    # a second cycle reads the chain again: nothing changed, nothing new is stored
    again = rehost(vault, "replicate", "hv", "--json").json()
    assert again["point"] != point["point"]


@pytest.mark.parametrize("damage", ["missing", "rewritten"])
def test_a_broken_chain_registers_nothing(tmp_path: Path, damage: str) -> None:
    paths = write_chain(tmp_path, SIZE, LAYERS[:2])
    if damage == "missing":
        paths[0].unlink()
        message = 'disk_1.avhdx: its parent ".\\disk.vhdx" is missing'
    else:  # the base written again after the checkpoint: a new DataWriteGuid
        write_vhdx(paths[0], SIZE, LAYERS[0])
        message = "disk_1.avhdx: its parent " + str(paths[0]) + " does not match"
    vault = tmp_path / "vault"
    rehost(vault, "init")
    r = rehost(vault, "source", "add", "image", "hv", str(paths[-1]), check=False)
    assert r.code != 0
    assert message in r.err
    assert rehost(vault, "machines", "--json").json() == []


def test_a_dirty_vhdx_is_named_then_read_through_a_replayed_copy(tmp_path: Path) -> None:
    path = tmp_path / "web.vhdx"
    write_vhdx(path, SIZE, Layer({0: b"A" * MIB}), dirty_write=(4096, b"Z" * 4096))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    vault = tmp_path / "vault"
    rehost(vault, "init")
    r = rehost(vault, "source", "add", "image", "web", str(path), check=False)
    assert r.code != 0
    assert "the VM was not shut down cleanly; its log holds writes not yet in the disk" in r.err
    assert rehost(vault, "machines", "--json").json() == []

    rehost(vault, "source", "add", "image", "web", str(path), "--replay-log-copy")
    rehost(vault, "replicate", "web")
    out = tmp_path / "out.raw"
    rehost(vault, "export", "web", "--point", "latest", "--output", str(out))
    want = bytearray(b"A" * MIB + bytes(SIZE - MIB))
    want[4096:8192] = b"Z" * 4096  # the write that was only in the log
    (tmp_path / "want.raw").write_bytes(want)
    assert qemu_img_compare(out, tmp_path / "want.raw")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the user's file: untouched
    copies = list((vault / "cache" / "images").glob("*.vhdx"))
    assert len(copies) == 1


def _export_folder(root: Path) -> Path:
    """``Export-VM``'s layout: a chain of two checkpoints on disk 0, a plain second disk, and an
    older branch from disk 0's first checkpoint (a checkpoint applied, then left)."""
    folder = root / "web01"
    disks = folder / "Virtual Hard Disks"
    disks.mkdir(parents=True)
    (folder / "Virtual Machines").mkdir()
    (folder / "Virtual Machines" / "5F3A.vmcx").write_bytes(b"not read")
    paths = write_chain(disks, SIZE, LAYERS, names=["web01.vhdx", "web01_A.avhdx", "web01_C.avhdx"])
    guid = vhdx_chain.read_vhdx(paths[1]).data_write_guid
    old = disks / "web01_B.avhdx"
    write_vhdx(old, SIZE, Layer(), parent=paths[1], parent_guid=guid)
    os.utime(old, (1, 1))
    write_vhdx(disks / "data.vhdx", 2 * MIB, Layer({0: b"x" * 4096}))
    return folder


def test_export_folder_finds_the_newest_end_of_each_chain(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path)
    disks = folder / "Virtual Hard Disks"
    assert export_disks(folder) == [disks / "data.vhdx", disks / "web01_C.avhdx"]
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add", "image", "-", str(folder))
    machine = rehost(vault, "machines", "--json").json()[0]
    assert machine["name"] == "web01"
    rehost(vault, "replicate", "web01")
    out = tmp_path / "out.raw"
    rehost(vault, "export", "web01", "--point", "latest", "--disk", "1", "--output", str(out))
    (tmp_path / "want.raw").write_bytes(expected(SIZE, LAYERS))
    assert qemu_img_compare(out, tmp_path / "want.raw")


def test_a_folder_that_is_no_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a Hyper-V export"):
        export_disks(tmp_path)


@pytest.mark.slow
def test_an_export_folder_with_a_checkpoint_fails_over_and_boots(tmp_path: Path, tiny_image: Path) -> None:
    """The demo machine exported from Hyper-V with one checkpoint: the base holds the disk as
    it was (marker "base"), the checkpoint the guest's writes since (marker "checkpoint")."""
    from rehost.testkit.tinylinux import set_marker

    set_marker(tiny_image, "base")
    before = tmp_path / "before.img"
    before.write_bytes(tiny_image.read_bytes())
    set_marker(tiny_image, "checkpoint")
    layers = layers_from_raw(before, tiny_image)
    assert 0 < sum(len(d) for d in layers[1].writes.values()) < 256 * 1024  # a few sectors
    disks = tmp_path / "demo" / "Virtual Hard Disks"
    disks.mkdir(parents=True)
    size = tiny_image.stat().st_size
    write_chain(disks, size, layers, names=["demo.vhdx", "demo_9C1E7B0A-2D5F-4E0B-8A61-3F7D2C4B9E10.avhdx"])
    vault, target = tmp_path / "vault", tmp_path / "target"
    rehost(vault, "init")
    rehost(vault, "target", "add", "local", "here", "--path", str(target))
    rehost(vault, "source", "add", "image", "-", str(tmp_path / "demo"))
    rehost(vault, "replicate", "demo")
    out = tmp_path / "out.raw"
    rehost(vault, "export", "demo", "--point", "latest", "--output", str(out))
    assert qemu_img_compare(out, tiny_image)
    r = rehost(vault, "failover", "demo", "--test", "--json").json()
    assert r["state"] == "succeeded", r
    boot = next(s for s in r["steps"] if s["name"] == "verify_boot")
    assert "REHOST-BOOT-OK marker=checkpoint" in boot["detail"]
    rehost(vault, "failover", "demo", "--cleanup")


def test_a_generation_2_export_is_found_to_be_uefi(tmp_path: Path) -> None:
    """A Generation 2 VM's disk: GPT, an EFI system partition, no BIOS boot code; read through
    the checkpoint chain (rehost's own reader), so the firmware comes from the merged disk."""
    import subprocess

    base = tmp_path / "base.raw"
    with base.open("wb") as f:
        f.truncate(16 * MIB)
    subprocess.run(["sgdisk", "-n", "1:2048:+4M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300", str(base)],
                   check=True, capture_output=True)
    later = tmp_path / "later.raw"
    later.write_bytes(base.read_bytes())
    with later.open("r+b") as f:
        f.seek(9 * MIB)
        f.write(os.urandom(4096))
    disks = tmp_path / "gen2vm" / "Virtual Hard Disks"
    disks.mkdir(parents=True)
    write_chain(disks, 16 * MIB, layers_from_raw(base, later), names=["gen2vm.vhdx", "gen2vm_1.avhdx"])
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add", "image", "-", str(tmp_path / "gen2vm"))
    machine = rehost(vault, "machines", "--json").json()[0]
    assert machine["name"] == "gen2vm" and machine["spec"]["firmware"] == "uefi"
    rehost(vault, "source", "add-image", "as-bios", str(disks / "gen2vm_1.avhdx"), "--firmware", "bios")
    machines = {m["name"]: m for m in rehost(vault, "machines", "--json").json()}
    assert machines["as-bios"]["spec"]["firmware"] == "bios"  # --firmware wins over the disk
    r = rehost(vault, "source", "add-image", "bad", str(base), "--firmware", "efi", check=False)
    assert r.code != 0 and "--firmware efi: bios or uefi" in r.err
