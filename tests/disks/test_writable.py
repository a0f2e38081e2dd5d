"""Writing through qemu-nbd into a new qcow2 (failover export), and zeroing without writes."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from rehost.disks import open_disk, open_nbd, probe
from rehost.disks.nbd_disk import NbdDisk
from rehost.errors import DiskError

from .images import make_variant, run

MiB = 1 << 20
SIZE = 64 * MiB


def _qemu_img_map(path: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", str(path)], capture_output=True, text=True,
        check=True,
    ).stdout
    return list(json.loads(out))


def test_write_zero_flush_then_compare(tmp_path: Path) -> None:
    target = tmp_path / "out.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", target, str(SIZE))
    rng = random.Random(7)
    expected = bytearray(SIZE)
    writes = [(0, 4096), (3 * MiB + 512, 3 * MiB + 777), (20 * MiB, 4 * MiB), (SIZE - 512, 512)]
    with open_disk(probe(target), writable=True) as disk:
        assert not disk.readonly and disk.can_zero and disk.can_flush
        for off, n in writes:
            data = rng.randbytes(n)
            disk.pwrite(off, data)
            expected[off : off + n] = data
        disk.zero(21 * MiB, 2 * MiB)  # inside written data: must read back as zeros
        expected[21 * MiB : 23 * MiB] = bytes(2 * MiB)
        disk.flush()
        assert disk.read(21 * MiB - 10, 20) == expected[21 * MiB - 10 : 21 * MiB + 10]
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    run("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, target)
    # The zeroed range holds no data in the qcow2 (zero clusters, not written zeros).
    zeroed = [e for e in _qemu_img_map(target) if e["start"] == 21 * MiB]
    assert zeroed and zeroed[0]["data"] is False


def test_zero_falls_back_to_writes_when_server_cannot_zero(tmp_path: Path) -> None:
    # nbdkit's nozero filter hides WRITE_ZEROES: NbdDisk must write zeros itself.
    sock = tmp_path / "nbdkit.sock"
    proc = subprocess.Popen(
        ["nbdkit", "--exit-with-parent", "-f", "-U", str(sock), "--filter=nozero",
         "memory", str(8 * MiB)],
    )
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        with open_nbd(sock) as disk:
            assert not disk.can_zero
            disk.pwrite(0, b"\xff" * (8 * MiB))
            disk.zero(MiB + 3, 5 * MiB)
            data = disk.read(0, 8 * MiB)
    finally:
        proc.terminate()
        proc.wait()
    assert data[: MiB + 3] == b"\xff" * (MiB + 3)
    assert data[MiB + 3 : 6 * MiB + 3] == bytes(5 * MiB)
    assert data[6 * MiB + 3 :] == b"\xff" * (2 * MiB - 3)


def test_read_only_refuses_writes(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "raw", tmp_path)
    with open_disk(image) as disk:
        with pytest.raises(DiskError, match="read-only"):
            disk.pwrite(0, b"x" * 512)
        with pytest.raises(DiskError, match="read-only"):
            disk.zero(0, 512)
        with pytest.raises(DiskError, match="outside the disk"):
            disk.read(disk.size - 10, 20)
    with pytest.raises(DiskError, match="closed"):
        disk.read(0, 512)


def test_extents_beyond_4_gib(tmp_path: Path) -> None:
    # A sparse 10 GiB qcow2: block status is asked in 1 GiB chunks and stitched together.
    big = tmp_path / "big.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", big, "10G")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 5G 1M",
        "-c", "write -P 0xcd 10239M 1M", big)
    with open_disk(probe(big)) as disk:
        extents = list(disk.extents())
        assert [(e.start, e.length, e.zero) for e in extents] == [
            (0, 5 << 30, True),
            (5 << 30, MiB, False),
            ((5 << 30) + MiB, (10 << 30) - (5 << 30) - 2 * MiB, True),
            ((10 << 30) - MiB, MiB, False),
        ]
        assert disk.read((10 << 30) - 4, 4) == b"\xcd" * 4
        window = list(disk.extents((5 << 30) - 10, 20))
        assert [(e.start, e.length, e.zero) for e in window] == [
            ((5 << 30) - 10, 10, True), (5 << 30, 10, False)
        ]


def test_block_status_of_unknown_context(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "raw", tmp_path)
    with open_disk(image) as disk:
        assert isinstance(disk, NbdDisk)
        with pytest.raises(DiskError, match="does not report 'qemu:dirty-bitmap:b0'"):
            list(disk.block_status("qemu:dirty-bitmap:b0"))
