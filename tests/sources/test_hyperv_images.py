"""Hyper-V inputs through the CLI, as a user would: a checkpoint chain (``.avhdx``) and a VHDX
whose log was not replayed. Each export is judged by ``qemu-img compare`` against the test's
own record of what it wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rehost.testkit.vhdx_chain import MIB, Layer, expected, write_chain, write_vhdx
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


def test_a_missing_parent_registers_nothing(tmp_path: Path) -> None:
    paths = write_chain(tmp_path, SIZE, LAYERS[:2])
    paths[0].unlink()
    vault = tmp_path / "vault"
    rehost(vault, "init")
    r = rehost(vault, "source", "add", "image", "hv", str(paths[-1]), check=False)
    assert r.code != 0
    assert 'disk_1.avhdx: its parent ".\\disk.vhdx" is missing' in r.err
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
