"""What a delta cycle stores: about the changed bytes, and nothing when nothing changed."""

from __future__ import annotations

import random
from pathlib import Path

from tests.cli_helpers import qemu_img_compare, rehost

MiB = 1 << 20
SIZE = 128 * MiB


def test_scattered_writes_store_about_the_changed_bytes(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    rng = random.Random(42)
    with open(disk, "wb") as f:  # incompressible data so compression cannot flatter us
        for _ in range(SIZE // MiB):
            f.write(rng.randbytes(MiB))
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add-image", "db", str(disk))
    first = rehost(vault, "replicate", "db", "--json").json()
    assert first["changed_bytes"] == SIZE

    writes = SIZE // 100 // 4096  # 1 % of the disk in scattered 4 KiB writes
    offsets = rng.sample(range(SIZE // 4096), writes)
    with open(disk, "r+b") as f:
        for block in offsets:
            f.seek(block * 4096)
            f.write(rng.randbytes(4096))
    changed = writes * 4096
    second = rehost(vault, "replicate", "db", "--json").json()
    assert second["changed_bytes"] == changed
    ratio = second["stored_bytes"] / changed
    print(f"\n1% scattered 4 KiB writes: changed {changed} B, stored {second['stored_bytes']} B "
          f"(ratio {ratio:.3f}, includes pack trailers, index and manifest)")
    assert ratio <= 2.0

    third = rehost(vault, "replicate", "db", "--json").json()
    assert third["new_blobs"] == 0 and third["changed_bytes"] == 0
    assert third["stored_bytes"] < 64 * 1024  # the manifest only: no new data
    out = tmp_path / "out.raw"
    rehost(vault, "export", "db", "--output", str(out))
    assert qemu_img_compare(out, disk)
