"""Differencing VHDX chains (Hyper-V checkpoints) and VHDX files with an un-replayed log.

The test kit writes the files after [MS-VHDX]; the expected content is the test's own record
of what it wrote (``expected``), and every reader is checked against that record: qemu-img for
a base, libvhdi for the chain, rehost's NBD export of the chain (read by libnbd)."""

from __future__ import annotations

import hashlib
import itertools
import random
import shutil
import uuid
from pathlib import Path

import pytest

from rehost.disks import open_disk, probe, vhdx_chain
from rehost.disks.formats import replay_on_copy
from rehost.errors import UsageError
from rehost.testkit.vhdx_chain import MIB, Layer, expected, write_chain, write_vhdx
from tests.cli_helpers import qemu_img_compare

SIZE = 6 * MIB

#: base: two full blocks; checkpoint 1: sectors here and there, a whole block, a zeroed block;
#: checkpoint 2: one sector over checkpoint 1's, one over the base's, one over nothing (block 1).
#: Block 5 is never written.
LAYERS = [
    Layer({0: b"A" * MIB, 2 * MIB + 4096: b"B" * 8192, 4 * MIB: b"b" * MIB}),
    Layer({512: b"C" * 1024, 3 * MIB: b"D" * MIB}, zero_blocks=[4]),
    Layer({1024: b"E" * 512, MIB + 4096: b"G" * 512, 2 * MIB + 8192: b"F" * 512}),
]


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    return write_chain(tmp_path, SIZE, LAYERS)


def test_independent_readers_agree_with_what_was_written(chain: list[Path], tmp_path: Path) -> None:
    import pyvhdi

    base_raw = tmp_path / "base.raw"
    base_raw.write_bytes(expected(SIZE, LAYERS[:1]))
    assert qemu_img_compare(chain[0], base_raw, "vhdx", "raw")  # qemu reads the base
    for depth in (1, 2, 3):  # libvhdi reads each level of the chain
        files = []
        for path in chain[:depth]:
            f = pyvhdi.file()
            f.open(str(path))
            files.append(f)
        for child, parent in itertools.pairwise(files[::-1]):
            child.set_parent(parent)
        got, want = files[-1].read_buffer_at_offset(SIZE, 0), expected(SIZE, LAYERS[:depth])
        # libvhdi (20210425) reads a child's PAYLOAD_BLOCK_ZERO as the parent's bytes; [MS-VHDX]
        # defines the block as zeros, and rehost follows the specification: leave block 4 out.
        assert got[:4 * MIB] == want[:4 * MIB] and got[5 * MIB:] == want[5 * MIB:]
        for f in files:
            f.close()


def test_probe_validates_the_chain(chain: list[Path]) -> None:
    img = probe(chain[-1])
    assert (img.format, img.virtual_size) == ("avhdx", SIZE)
    assert probe(chain[0]).format == "vhdx"  # the base alone is QEMU's
    layers = vhdx_chain.read_chain(chain[-1])
    assert [layer.path for layer in layers] == chain[::-1]


def test_extents_skip_what_no_layer_holds(chain: list[Path]) -> None:
    reader = vhdx_chain.ChainReader(chain[-1])
    try:
        extents = [(e.start, e.length, e.zero) for e in reader.extents()]
        assert extents == [
            (0, MIB, False),  # the base's block under sectors of both checkpoints
            (MIB, 4096, True), (MIB + 4096, 512, False), (MIB + 4608, MIB - 4608, True),  # one sector
            (2 * MIB, 2 * MIB, False),  # the base's block 2, checkpoint 1's block 3
            (4 * MIB, 2 * MIB, True),  # zeroed by checkpoint 1, never written
        ]
        assert list(reader.extents(MIB + 4000, 200)) == [
            vhdx_chain.Extent(MIB + 4000, 96, True), vhdx_chain.Extent(MIB + 4096, 104, False)]
        assert reader.reads == 0
        assert reader.pread(0, SIZE) == expected(SIZE, LAYERS)
        assert reader.reads == 3  # one libvhdi read per data extent, none for the holes
    finally:
        reader.close()


def test_the_nbd_export_equals_the_record_and_holes_are_not_read(chain: list[Path]) -> None:
    img = probe(chain[-1])
    with open_disk(img) as disk:
        assert disk.size == SIZE
        got = bytearray(SIZE)
        for e in disk.extents():
            if not e.zero:
                disk.readinto(e.start, memoryview(got)[e.start:e.end])
        zero_bytes = sum(e.length for e in disk.extents() if e.zero)
    assert bytes(got) == expected(SIZE, LAYERS)
    assert zero_bytes == 3 * MIB - 512


def test_a_missing_parent_names_it(chain: list[Path]) -> None:
    chain[1].unlink()
    with pytest.raises(UsageError, match=r'disk_2\.avhdx: its parent "\.\\disk_1\.avhdx" is '
                                         r"missing \(looked for .*disk_1\.avhdx; "):
        probe(chain[-1])


def test_a_parent_outside_the_childs_folder_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = tmp_path / "a" / "base.vhdx"
    guid = write_vhdx(base, 2 * MIB, Layer())
    write_vhdx(tmp_path / "b" / "c.avhdx", 2 * MIB, Layer(), parent=base, parent_guid=guid)
    assert vhdx_chain.read_vhdx(tmp_path / "b" / "c.avhdx").locator["relative_path"] == r"..\a\base.vhdx"
    with pytest.raises(UsageError, match=r"c\.avhdx: its parent \"\.\.\\a\\base\.vhdx\" is missing "
                                         r"\(looked for .*b/base\.vhdx; a checkpoint's parent must be in "):
        probe(tmp_path / "b" / "c.avhdx")
    shutil.copyfile(base, tmp_path / "b" / "base.vhdx")  # moved next to its child: found
    assert probe(tmp_path / "b" / "c.avhdx").format == "avhdx"


def test_a_parent_with_another_data_write_guid_is_refused(chain: list[Path], tmp_path: Path) -> None:
    # the base written again (the same content): a new DataWriteGuid, as after the VM ran on
    write_vhdx(chain[0], SIZE, LAYERS[0])
    with pytest.raises(UsageError, match=r"disk_1\.avhdx: its parent .*disk\.vhdx does not match: "
                                         r"the child expects DataWriteGuid"):
        probe(chain[-1])


def test_a_wrong_size_parent_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.vhdx"
    guid = write_vhdx(base, 2 * MIB, Layer())
    write_vhdx(tmp_path / "c.avhdx", 3 * MIB, Layer(), parent=base, parent_guid=guid)
    with pytest.raises(UsageError, match="another size"):
        probe(tmp_path / "c.avhdx")


def test_a_locator_without_linkage_guid_text(tmp_path: Path) -> None:
    base = tmp_path / "base.vhdx"
    write_vhdx(base, 2 * MIB, Layer())
    write_vhdx(tmp_path / "c.avhdx", 2 * MIB, Layer(), parent=base, parent_guid=uuid.UUID(int=7))
    with pytest.raises(UsageError, match="00000000-0000-0000-0000-000000000007"):
        probe(tmp_path / "c.avhdx")


def test_a_dirty_log_is_named_and_replayed_on_a_copy_only(tmp_path: Path) -> None:
    path = tmp_path / "dirty.vhdx"
    write_vhdx(path, 4 * MIB, Layer({0: b"A" * MIB}), dirty_write=(8192, b"Z" * 4096))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(vhdx_chain.DirtyLogError, match=r"not shut down cleanly; its log holds writes "
                                                       r"not yet in the disk.*--replay-log-copy"):
        probe(path)
    img = probe(path, dirty_log=True)
    copy = replay_on_copy(img, tmp_path / "cache" / "copy.vhdx")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the user's file: untouched
    want = bytearray(b"A" * MIB + bytes(3 * MIB))
    want[8192:12288] = b"Z" * 4096  # the write that was only in the log
    raw = tmp_path / "want.raw"
    raw.write_bytes(want)
    assert qemu_img_compare(copy.path, raw, "vhdx", "raw")
    assert not vhdx_chain.read_vhdx(copy.path).dirty


def test_a_damaged_header_is_a_clear_error(chain: list[Path]) -> None:
    shutil.copyfile(chain[1], chain[1].with_suffix(".bak"))
    with open(chain[1], "r+b") as f:
        for off in vhdx_chain.HEADER_OFFSETS:
            f.seek(off + 100)
            f.write(b"\xff")
    with pytest.raises(UsageError, match=r"disk_1\.avhdx: not a valid VHDX"):
        probe(chain[-1])


@pytest.mark.parametrize(("seed", "sector"), [(1, 512), (2, 512), (3, 4096)])
def test_random_chains_read_as_written(tmp_path: Path, seed: int, sector: int) -> None:
    """Scattered runs of sectors in three layers (partially present blocks everywhere): the
    extents and bytes rehost serves equal the record; holes are only where nothing was written."""
    rng = random.Random(seed)
    size = 5 * MIB
    layers = []
    for _ in range(3):
        writes: dict[int, bytes] = {}
        for _ in range(rng.randrange(1, 12)):
            start = rng.randrange(0, size // sector - 64) * sector
            writes[start] = rng.randbytes(rng.randrange(1, 64) * sector)
        layers.append(Layer(_disjoint(writes)))
    paths = write_chain(tmp_path, size, layers, sector=sector)
    assert vhdx_chain.read_vhdx(paths[-1]).logical_sector == sector
    want = expected(size, layers)
    written = bytearray(size)  # 1 where any layer wrote
    for layer in layers:
        for off, data in layer.writes.items():
            written[off:off + len(data)] = b"\1" * len(data)
    reader = vhdx_chain.ChainReader(paths[-1])
    try:
        assert reader.pread(0, size) == want
        for e in reader.extents():
            if e.zero:
                assert not any(written[e.start:e.end])
    finally:
        reader.close()


def _disjoint(writes: dict[int, bytes]) -> dict[int, bytes]:
    """Later writes cut out of earlier ones (a layer's writes may not overlap)."""
    out: dict[int, bytes] = {}
    for off, data in sorted(writes.items()):
        last = max((o + len(d) for o, d in out.items()), default=0)
        if off < last:
            data, off = data[last - off:], last
        if data:
            out[off] = data
    return out
