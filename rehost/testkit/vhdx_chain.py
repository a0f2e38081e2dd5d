"""A small VHDX writer for tests: dynamic base disks and differencing children (Hyper-V
checkpoints, ``.avhdx``), written after Microsoft's [MS-VHDX] specification, because nothing
on Linux writes differencing VHDX.

Layout of every file (all objects 1 MiB aligned): file identifier at 0, two headers (64 and
128 KiB, CRC-32C), two region tables (192 and 256 KiB), the log at 1 MiB, the metadata region
at 2 MiB (File Parameters with HasParent, Virtual Disk Size, Page 83 Data, logical and
physical sector sizes, the parent locator), the BAT at 3 MiB, then payload blocks and sector
bitmap blocks. ``write_vhdx`` returns the file's DataWriteGuid, which a child's
``parent_linkage`` records.

What the test wrote is the expected content (``Layer.apply`` onto a raw file): readers
(qemu-img for a base, libvhdi for chains, rehost) are checked against that record, never
against each other.
"""

from __future__ import annotations

import itertools
import os
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from rehost.disks import vhdx_chain as v

MIB = v.MIB
LOG_OFFSET, LOG_LENGTH = 1 * MIB, 1 * MIB
METADATA_OFFSET, BAT_OFFSET, DATA_OFFSET = 2 * MIB, 3 * MIB, 4 * MIB
_FILL = 0xEE  # sectors of a partially present block that are not present: never read


@dataclass(frozen=True)
class Layer:
    """What one file of a chain holds: ``writes`` (disk offset -> bytes, sector aligned) and
    ``zero_blocks`` (payload blocks marked PAYLOAD_BLOCK_ZERO)."""

    writes: Mapping[int, bytes] = field(default_factory=dict)
    zero_blocks: Sequence[int] = ()

    def apply(self, raw: bytearray, block_size: int = MIB) -> None:
        for b in self.zero_blocks:
            raw[b * block_size:(b + 1) * block_size] = bytes(block_size)
        for off, data in self.writes.items():
            raw[off:off + len(data)] = data


def write_vhdx(path: Path, size: int, layer: Layer, *, parent: Path | None = None,
               parent_guid: uuid.UUID | None = None, block_size: int = MIB, sector: int = 512,
               dirty_write: tuple[int, bytes] | None = None) -> uuid.UUID:
    """Write ``path``; with ``parent`` a differencing disk whose locator names it (relative
    and absolute) with ``parent_guid``. ``dirty_write`` (a disk offset in a block this file
    holds, 4096 bytes) leaves the file as after a crash: the bytes sit only in the log, the
    header names the log. Returns the file's DataWriteGuid."""
    data_write = uuid.uuid4()
    log_guid = uuid.uuid4() if dirty_write else uuid.UUID(int=0)
    has_parent = parent is not None
    blocks = -(-size // block_size)
    ratio = (1 << 23) * sector // block_size
    entries = -(-blocks // ratio) * (ratio + 1) if has_parent else blocks + (blocks - 1) // ratio
    bat = [0] * entries
    out = bytearray()  # payload area, from DATA_OFFSET
    where: dict[int, int] = {}

    def allocate(content: bytes) -> int:
        at = DATA_OFFSET + len(out)
        out.extend(content)
        return at

    per_block: dict[int, list[tuple[int, bytes]]] = {}
    for off, data in sorted(layer.writes.items()):
        if off % sector or len(data) % sector:
            raise ValueError("writes must be sector aligned")
        pos = 0
        while pos < len(data):
            b = (off + pos) // block_size
            n = min(len(data) - pos, (b + 1) * block_size - off - pos)
            per_block.setdefault(b, []).append((off + pos - b * block_size, data[pos:pos + n]))
            pos += n
    bitmaps: dict[int, bytearray] = {}
    for b in layer.zero_blocks:
        bat[b + b // ratio] = v.PAYLOAD_BLOCK_ZERO
    for b, pieces in sorted(per_block.items()):
        content = bytearray([_FILL if has_parent else 0]) * block_size
        covered = 0
        for rel, data in pieces:
            content[rel:rel + len(data)] = data
            covered += len(data)
        full = covered >= block_size or not has_parent
        if full and has_parent:
            content = bytearray(block_size)
            for rel, data in pieces:
                content[rel:rel + len(data)] = data
        where[b] = allocate(bytes(content))
        state = v.PAYLOAD_BLOCK_FULLY_PRESENT if full else v.PAYLOAD_BLOCK_PARTIALLY_PRESENT
        bat[b + b // ratio] = state | (where[b] // MIB) << 20
        if not full:
            bits = bitmaps.setdefault(b // ratio, bytearray(MIB))
            for rel, data in pieces:
                first = (b % ratio) * block_size // sector + rel // sector
                for s in range(first, first + len(data) // sector):
                    bits[s >> 3] |= 1 << (s & 7)
    for chunk, bits in sorted(bitmaps.items()):
        bat[chunk * (ratio + 1) + ratio] = v.SB_BLOCK_PRESENT | (allocate(bytes(bits)) // MIB) << 20
    file_size = DATA_OFFSET + len(out)

    with open(path, "wb") as f:
        f.write(v.SIGNATURE + "rehost testkit".encode("utf-16-le"))
        for seq, off in enumerate(v.HEADER_OFFSETS):
            f.seek(off)
            f.write(_header(seq, data_write, log_guid))
        for off in v.REGION_OFFSETS:
            f.seek(off)
            f.write(_region_table(-(-8 * entries // MIB) * MIB))
        f.seek(METADATA_OFFSET)
        f.write(_metadata(size, block_size, sector, path, parent, parent_guid))
        f.seek(BAT_OFFSET)
        f.write(struct.pack(f"<{entries}Q", *bat))
        f.seek(DATA_OFFSET)
        f.write(out)
        if dirty_write:
            disk_off, data = dirty_write
            b = disk_off // block_size
            if b not in where or len(data) != 4096 or disk_off % 4096:
                raise ValueError("a dirty write is 4096 aligned bytes in a block the file holds")
            f.seek(LOG_OFFSET)
            f.write(_log_entry(log_guid, where[b] + disk_off % block_size, data, file_size))
        f.truncate(-(-file_size // MIB) * MIB)
    return data_write


def write_chain(folder: Path, size: int, layers: Sequence[Layer], *, names: Sequence[str] = (),
                sector: int = 512) -> list[Path]:
    """A base ``disk.vhdx`` and one ``disk_N.avhdx`` per further layer (each the child of the
    one before); returns the paths, base first."""
    names = list(names) or ["disk.vhdx"] + [f"disk_{i}.avhdx" for i in range(1, len(layers))]
    paths: list[Path] = []
    guid = None
    for i, layer in enumerate(layers):
        path = folder / names[i]
        guid = write_vhdx(path, size, layer, parent=paths[-1] if paths else None, parent_guid=guid,
                          sector=sector)
        paths.append(path)
    return paths


def expected(size: int, layers: Sequence[Layer], block_size: int = MIB) -> bytes:
    """The merged disk the layers make: what the test wrote, applied base first."""
    raw = bytearray(size)
    for layer in layers:
        layer.apply(raw, block_size)
    return bytes(raw)


def _header(seq: int, data_write: uuid.UUID, log_guid: uuid.UUID) -> bytes:
    h = bytearray(v.HEADER_SIZE)
    struct.pack_into("<4sIQ16s16s16sHHIQ", h, 0, b"head", 0, seq, uuid.uuid4().bytes_le,
                     data_write.bytes_le, log_guid.bytes_le, 0, 1, LOG_LENGTH, LOG_OFFSET)
    struct.pack_into("<I", h, 4, v.crc32c(h))
    return bytes(h)


def _region_table(bat_length: int) -> bytes:
    r = bytearray(v.REGION_SIZE)
    struct.pack_into("<4sIII", r, 0, b"regi", 0, 2, 0)
    struct.pack_into("<16sQII", r, 16, v.BAT_REGION.bytes_le, BAT_OFFSET, bat_length, 1)
    struct.pack_into("<16sQII", r, 48, v.METADATA_REGION.bytes_le, METADATA_OFFSET, MIB, 1)
    struct.pack_into("<I", r, 4, v.crc32c(r))
    return bytes(r)


def _metadata(size: int, block_size: int, sector: int, path: Path, parent: Path | None,
              parent_guid: uuid.UUID | None) -> bytes:
    items: list[tuple[uuid.UUID, bytes, int]] = [  # id, data, flags (2 IsVirtualDisk, 4 IsRequired)
        (v.FILE_PARAMETERS, struct.pack("<II", block_size, 2 if parent else 0), 4),
        (v.VIRTUAL_DISK_SIZE, struct.pack("<Q", size), 6),
        (v.PAGE_83_DATA, uuid.uuid4().bytes_le, 6),
        (v.LOGICAL_SECTOR_SIZE, struct.pack("<I", sector), 6),
        (v.PHYSICAL_SECTOR_SIZE, struct.pack("<I", 4096), 6),
    ]
    if parent is not None:
        if parent_guid is None:
            raise ValueError("a differencing disk needs its parent's DataWriteGuid")
        relative = PureWindowsPath(*Path(os.path.relpath(parent, path.parent)).parts)
        items.append((v.PARENT_LOCATOR, _locator({
            "parent_linkage": "{" + str(parent_guid) + "}",
            "relative_path": str(relative) if relative.parts[0] == ".." else ".\\" + str(relative),
            "absolute_win32_path": str(PureWindowsPath("C:\\Hyper-V\\Virtual Hard Disks", parent.name)),
        }), 4))
    region = bytearray(MIB)
    struct.pack_into("<8sHH", region, 0, b"metadata", 0, len(items))
    at = 64 * 1024
    for i, (guid, data, flags) in enumerate(items):
        struct.pack_into("<16sIII", region, 32 + 32 * i, guid.bytes_le, at, len(data), flags)
        region[at:at + len(data)] = data
        at += -(-len(data) // 8) * 8
    return bytes(region)


def _locator(pairs: dict[str, str]) -> bytes:
    head = bytearray(v.VHDX_PARENT_LOCATOR_TYPE.bytes_le + struct.pack("<HH", 0, len(pairs)))
    table = bytearray()
    strings = bytearray()
    base = len(head) + 12 * len(pairs)
    for key, value in pairs.items():
        k, val = key.encode("utf-16-le"), value.encode("utf-16-le")
        ko = base + len(strings)
        strings += k
        vo = base + len(strings)
        strings += val
        table += struct.pack("<IIHH", ko, vo, len(k), len(val))
    return bytes(head + table + strings)


def _log_entry(log_guid: uuid.UUID, file_offset: int, data: bytes, file_size: int) -> bytes:
    """One log entry (a header and one data descriptor, then one data sector) that writes
    ``data`` at ``file_offset`` when replayed; CRC-32C over the whole entry."""
    entry = bytearray(8192)
    struct.pack_into("<4sIIIQII16sQQ", entry, 0, b"loge", 0, len(entry), 0, 1, 1, 0,
                     log_guid.bytes_le, file_size, file_size)
    struct.pack_into("<4s4s8sQQ", entry, 64, b"desc", data[4092:4096], data[:8], file_offset, 1)
    struct.pack_into("<4sI4084sI", entry, 4096, b"data", 0, data[8:4092], 1)
    struct.pack_into("<I", entry, 4, v.crc32c(entry))
    return bytes(entry)


def layers_from_raw(*states: Path, sector: int = 512) -> list[Layer]:
    """A chain's layers from raw images of a disk over time: the base holds the first state's
    non-zero blocks, each checkpoint the sectors that differ from the state before it (as
    Hyper-V records a guest's writes). The states must have the same size."""
    images = [s.read_bytes() for s in states]
    layers = [Layer({off: images[0][off:off + MIB] for off in range(0, len(images[0]), MIB)
                     if images[0][off:off + MIB].count(0) != len(images[0][off:off + MIB])})]
    for before, after in itertools.pairwise(images):
        if len(before) != len(after):
            raise ValueError("the states of a disk have one size")
        writes: dict[int, bytes] = {}
        run = -1
        for off in range(0, len(after), sector):
            if after[off:off + sector] != before[off:off + sector]:
                if run < 0:
                    run = off
            elif run >= 0:
                writes[run], run = after[run:off], -1
        if run >= 0:
            writes[run] = after[run:]
        layers.append(Layer(writes))
    return layers
