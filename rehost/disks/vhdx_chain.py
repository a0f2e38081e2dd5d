"""Differencing VHDX chains (Hyper-V checkpoints: ``child.avhdx`` -> ... -> ``base.vhdx``).

QEMU refuses differencing VHDX, so rehost reads a chain itself: the data through libvhdi
(``pyvhdi``: each file opened, each parent set with ``set_parent``), the allocation from
the files' own Block Allocation Tables, parsed here after Microsoft's [MS-VHDX]
specification (libvhdi does not say which blocks are allocated). The merged disk is a
``ChainReader`` that ``rehost.disks.nbd_serve.NbdExportServer`` serves like a recovery
point; the cycle reads it as any other NBD export, holes never read.

What a file says about itself (``read_vhdx``): its header (the current one of two, by
sequence number, with a valid CRC-32C), its region table (where the BAT and the metadata
live), its metadata (block size, virtual size, sector size, HasParent, the parent locator)
and its BAT (per payload block a state and a file offset; differencing disks also have a
sector bitmap block per chunk, one bit per sector present in this file).

A chain is validated before anything reads it: every parent must exist next to its child
(found by the file name of the locator's ``relative_path``, else of ``absolute_win32_path``)
and carry the DataWriteGuid the child's ``parent_linkage`` records; all layers must have the
same size; no layer may hold an un-replayed log.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from rehost.disks.extent import Extent
from rehost.errors import DiskError, UsageError

SIGNATURE = b"vhdxfile"
KIB, MIB = 1 << 10, 1 << 20
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
REGION_OFFSETS = (192 * KIB, 256 * KIB)
HEADER_SIZE, REGION_SIZE = 4 * KIB, 64 * KIB
MAX_SIZE = 64 << 40  # [MS-VHDX]: a virtual disk is at most 64 TiB

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

# BAT entry states (the low 3 bits); the file offset is in MiB, in bits 20-63.
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_PRESENT = 6

DIRTY_LOG = ("the VM was not shut down cleanly; its log holds writes not yet in the disk")

_ZERO_GUID = uuid.UUID(int=0)


class DirtyLogError(UsageError):
    """A VHDX whose log holds writes not yet in the disk (QEMU refuses to read it as is)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path}: {DIRTY_LOG}. rehost never writes to your file: add the source with "
            "--replay-log-copy to replay the log on a copy in the vault's cache (qemu-img check "
            "-r all on the copy), or start the VM and shut it down cleanly in Hyper-V")


# -- CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries ---------

def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def checksummed(block: bytes | bytearray, at: int = 4) -> bool:
    """True when ``block``'s CRC-32C (stored at ``at``, computed with that field zero) holds."""
    stored = struct.unpack_from("<I", block, at)[0]
    zeroed = bytes(block[:at]) + b"\0\0\0\0" + bytes(block[at + 4:])
    return bool(stored == crc32c(zeroed))


# -- one file -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VhdxFile:
    """What one VHDX file says about itself (no payload read)."""

    path: Path
    virtual_size: int
    block_size: int
    logical_sector: int
    has_parent: bool
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    locator: dict[str, str] = field(repr=False)
    bat: tuple[int, ...] = field(repr=False)

    @property
    def dirty(self) -> bool:
        """The header names a log: writes may sit in it that are not yet in the disk."""
        return self.log_guid != _ZERO_GUID

    @property
    def chunk_ratio(self) -> int:
        """Payload blocks per sector bitmap block."""
        return (1 << 23) * self.logical_sector // self.block_size

    @property
    def blocks(self) -> int:
        return -(-self.virtual_size // self.block_size)

    def payload(self, block: int) -> tuple[int, int]:
        """``(state, file offset)`` of payload block ``block``."""
        entry = self.bat[block + block // self.chunk_ratio]
        return entry & 7, (entry >> 20) * MIB

    def bitmap(self, chunk: int) -> tuple[int, int]:
        """``(state, file offset)`` of the sector bitmap block of ``chunk``."""
        entry = self.bat[chunk * (self.chunk_ratio + 1) + self.chunk_ratio]
        return entry & 7, (entry >> 20) * MIB

    @property
    def parent_linkage(self) -> set[uuid.UUID]:
        """The DataWriteGuid(s) the parent must carry."""
        out = set()
        for key in ("parent_linkage", "parent_linkage2"):
            if key in self.locator:
                try:
                    out.add(uuid.UUID(self.locator[key].strip("{}")))
                except ValueError:
                    raise UsageError(f"{self.path}: its parent locator's {key} "
                                     f"{self.locator[key]!r} is not a GUID") from None
        return out


def is_vhdx(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == SIGNATURE
    except OSError:
        return False


def read_vhdx(path: Path) -> VhdxFile:
    """Parse ``path``'s header, region table, metadata and BAT; UsageError naming the file
    when it is not a VHDX rehost can read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _parse(path, f)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    except (struct.error, ValueError):  # cut short, or text that is no UTF-16
        raise UsageError(f"{path}: not a valid VHDX (a structure is cut short or garbled)") from None


def _parse(path: Path, f: Any) -> VhdxFile:
    def bad(what: str) -> UsageError:
        return UsageError(f"{path}: not a valid VHDX ({what})")

    if f.read(8) != SIGNATURE:
        raise bad("no 'vhdxfile' signature")
    headers = []
    for off in HEADER_OFFSETS:
        f.seek(off)
        h = f.read(HEADER_SIZE)
        if len(h) == HEADER_SIZE and h[:4] == b"head" and checksummed(h):
            headers.append(h)
    if not headers:
        raise bad("neither header has a valid checksum")
    h = max(headers, key=lambda x: struct.unpack_from("<Q", x, 8)[0])
    data_write = uuid.UUID(bytes_le=h[32:48])
    log_guid = uuid.UUID(bytes_le=h[48:64])
    regions: dict[uuid.UUID, tuple[int, int]] = {}
    for off in REGION_OFFSETS:
        f.seek(off)
        r = f.read(REGION_SIZE)
        if len(r) == REGION_SIZE and r[:4] == b"regi" and checksummed(r):
            count = struct.unpack_from("<I", r, 8)[0]
            for i in range(min(count, 2047)):
                g, foff, length, _ = struct.unpack_from("<16sQII", r, 16 + 32 * i)
                regions[uuid.UUID(bytes_le=g)] = (foff, length)
            break
    else:
        raise bad("neither region table has a valid checksum")
    if BAT_REGION not in regions or METADATA_REGION not in regions:
        raise bad("no BAT or metadata region")
    meta = _metadata(f, *regions[METADATA_REGION], bad)
    try:
        block_size, flags = struct.unpack("<II", meta[FILE_PARAMETERS][:8])
        virtual_size = struct.unpack("<Q", meta[VIRTUAL_DISK_SIZE][:8])[0]
        logical = struct.unpack("<I", meta[LOGICAL_SECTOR_SIZE][:4])[0]
    except KeyError as e:
        raise bad(f"metadata item {e} missing") from None
    if block_size < MIB or block_size > 256 * MIB or block_size & (block_size - 1):
        raise bad(f"block size {block_size}")
    if logical not in (512, 4096) or not 0 < virtual_size <= MAX_SIZE or virtual_size % logical:
        raise bad(f"virtual size {virtual_size} with {logical}-byte sectors")
    has_parent = bool(flags & 2)
    locator = _locator(meta[PARENT_LOCATOR], bad) if has_parent and PARENT_LOCATOR in meta else {}
    if has_parent and not locator:
        raise bad("a differencing disk without a parent locator")
    bat_off, bat_len = regions[BAT_REGION]
    f.seek(bat_off)
    raw = f.read(bat_len)
    info = VhdxFile(path, virtual_size, block_size, logical, has_parent, data_write, log_guid,
                    locator, ())
    need = _bat_entries(info)
    if len(raw) < 8 * need:
        raise bad(f"the BAT holds {len(raw) // 8} entries, the disk needs {need}")
    return VhdxFile(path, virtual_size, block_size, logical, has_parent, data_write, log_guid,
                    locator, struct.unpack_from(f"<{need}Q", raw))


def _bat_entries(info: VhdxFile) -> int:
    ratio, blocks = info.chunk_ratio, info.blocks
    if info.has_parent:
        return -(-blocks // ratio) * (ratio + 1)
    return blocks + (blocks - 1) // ratio


def _metadata(f: Any, offset: int, length: int, bad: Any) -> dict[uuid.UUID, bytes]:
    f.seek(offset)
    region = f.read(length)
    if region[:8] != b"metadata":
        raise bad("no metadata table")
    count = struct.unpack_from("<H", region, 10)[0]
    items = {}
    for i in range(min(count, 2047)):
        g, item_off, item_len, _flags = struct.unpack_from("<16sIII", region, 32 + 32 * i)
        items[uuid.UUID(bytes_le=g)] = bytes(region[item_off:item_off + item_len])
    return items


def _locator(item: bytes, bad: Any) -> dict[str, str]:
    if uuid.UUID(bytes_le=item[:16]) != VHDX_PARENT_LOCATOR_TYPE:
        raise bad("the parent locator is not of the VHDX type")
    count = struct.unpack_from("<H", item, 18)[0]
    out = {}
    for i in range(count):
        ko, vo, kl, vl = struct.unpack_from("<IIHH", item, 20 + 12 * i)
        out[item[ko:ko + kl].decode("utf-16-le")] = item[vo:vo + vl].decode("utf-16-le")
    return out


# -- the chain ----------------------------------------------------------------------------------

def find_parent(child: VhdxFile) -> Path:
    """The parent file the child's locator names, looked for next to the child (where Hyper-V
    keeps a checkpoint's parent): by the file name of ``relative_path``, then of
    ``absolute_win32_path`` and ``volume_path``. A locator cannot make rehost read a file
    elsewhere (``..\\..\\secret.vhdx``), as a VMDK may not name extents outside its folder."""
    folder = child.path.absolute().parent
    names = [PureWindowsPath(child.locator[key]).name
             for key in ("relative_path", "absolute_win32_path", "volume_path") if child.locator.get(key)]
    for name in names:
        if name and (folder / name).is_file():
            return folder / name
    named = next((child.locator[k] for k in ("relative_path", "absolute_win32_path", "volume_path")
                  if child.locator.get(k)), "no file name")
    looked = " and ".join(dict.fromkeys(str(folder / n) for n in names if n)) or "nothing"
    raise UsageError(f'{child.path}: its parent "{named}" is missing (looked for {looked}; a '
                     "checkpoint's parent must be in its folder)")


def read_chain(path: Path, max_depth: int = 64) -> list[VhdxFile]:
    """The validated chain of ``path``: the file itself first, its base last."""
    layers = [read_vhdx(Path(path))]
    while layers[-1].has_parent:
        child = layers[-1]
        if len(layers) > max_depth:
            raise UsageError(f"{path}: its chain of parents is longer than {max_depth}")
        parent = read_vhdx(find_parent(child))
        expected = child.parent_linkage
        if not expected:
            raise UsageError(f"{child.path}: its parent locator records no parent_linkage")
        if parent.data_write_guid not in expected:
            raise UsageError(
                f"{child.path}: its parent {parent.path} does not match: the child expects "
                f"DataWriteGuid {{{', '.join(str(g) for g in sorted(expected))}}}, the parent has "
                f"{{{parent.data_write_guid}}} (the parent changed after the checkpoint was taken)")
        if parent.virtual_size != child.virtual_size:
            raise UsageError(f"{child.path}: its parent {parent.path} has another size "
                             f"({parent.virtual_size} bytes, the child {child.virtual_size})")
        if any(p.path.resolve() == parent.path.resolve() for p in layers):
            raise UsageError(f"{path}: its chain of parents loops at {parent.path}")
        layers.append(parent)
    for layer in layers:
        if layer.dirty and layer.has_parent:
            raise UsageError(f"{layer.path}: {DIRTY_LOG}; rehost cannot replay the log of a "
                             "differencing disk: start and shut the VM down cleanly in Hyper-V")
    return layers


def sector_map(layers: list[VhdxFile], block: int) -> list[tuple[int, int, int | None]]:
    """Where the bytes of payload block ``block`` come from: ``(start, length, layer)`` runs
    (disk offsets), ``layer`` None for zeros. Children win over parents, sector by sector."""
    top = layers[0]
    start = block * top.block_size
    end = min(start + top.block_size, top.virtual_size)
    runs: list[tuple[int, int, int | None]] = []
    _resolve(layers, 0, block, start, end, runs)
    merged: list[tuple[int, int, int | None]] = []
    for s, n, src in runs:
        if merged and merged[-1][2] == src and merged[-1][0] + merged[-1][1] == s:
            merged[-1] = (merged[-1][0], merged[-1][1] + n, src)
        else:
            merged.append((s, n, src))
    return merged


def _resolve(layers: list[VhdxFile], i: int, block: int, start: int, end: int,
             out: list[tuple[int, int, int | None]]) -> None:
    layer = layers[i]
    state, _ = layer.payload(block)
    if state == PAYLOAD_BLOCK_FULLY_PRESENT:
        out.append((start, end - start, i))
    elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and layer.has_parent:
        for s, n, present in _bitmap_runs(layer, start, end):
            if present:
                out.append((s, n, i))
            else:
                _resolve(layers, i + 1, block, s, s + n, out)
    elif state == PAYLOAD_BLOCK_ZERO or not layer.has_parent or i + 1 == len(layers):
        # [MS-VHDX]: a ZERO block reads as zeros, in a differencing disk too (libvhdi 20210425
        # reads the parent's bytes there); NOT_PRESENT in a base is zeros
        out.append((start, end - start, None))
    else:  # NOT_PRESENT, UNDEFINED, UNMAPPED in a differencing disk: the parent's bytes
        _resolve(layers, i + 1, block, start, end, out)


def _bitmap_runs(layer: VhdxFile, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """Runs of sectors present (bit set) or not in ``layer``'s sector bitmap."""
    sector = layer.logical_sector
    per_chunk = (1 << 23) * sector  # bytes of disk one bitmap block covers
    chunk = start // per_chunk
    state, offset = layer.bitmap(chunk)
    if state != SB_BLOCK_PRESENT:
        yield start, end - start, False
        return
    first, last = (start - chunk * per_chunk) // sector, (end - chunk * per_chunk) // sector
    with open(layer.path, "rb") as f:
        f.seek(offset + first // 8)
        bits = f.read((last + 7) // 8 - first // 8)
    if len(bits) < (last + 7) // 8 - first // 8:
        raise DiskError(f"{layer.path}: its sector bitmap at {offset} is cut short")
    # one character per sector, least significant bit first; runs found by the regex engine
    text = format(int.from_bytes(bits, "little"), f"0{8 * len(bits)}b")[::-1]
    skip = first - first // 8 * 8
    at = chunk * per_chunk + first * sector
    for run in re.finditer(r"0+|1+", text[skip:skip + last - first]):
        yield at + run.start() * sector, len(run.group()) * sector, run.group()[0] == "1"


class ChainReader:
    """The merged disk of a chain, read-only: a ``BlockReader`` for ``NbdExportServer`` and a
    ``ReadableDisk`` for a cycle. Extents come from the BATs; bytes from libvhdi."""

    def __init__(self, path: Path) -> None:
        self.layers = read_chain(Path(path))
        self.name = str(path)
        self.reads = 0  # pread calls: tests count them
        self._lock = threading.Lock()  # libvhdi handles are used by one thread at a time
        self._map_lock = threading.Lock()
        self._maps: dict[int, list[tuple[int, int, int | None]]] = {}
        self._files = self._open_libvhdi()

    def _open_libvhdi(self) -> list[Any]:
        try:
            import pyvhdi  # type: ignore[import-not-found]  # Debian python3-libvhdi
        except ImportError:
            raise UsageError("reading differencing VHDX needs libvhdi (Debian python3-libvhdi; "
                             "run ./scripts/install)") from None
        files = []
        try:
            for layer in self.layers:
                f = pyvhdi.file()
                f.open(str(layer.path))
                files.append(f)
            for child, parent in itertools.pairwise(files):
                child.set_parent(parent)
        except OSError as e:  # pyvhdi raises IOError
            for f in files:
                f.close()
            raise DiskError(f"{self.name}: libvhdi cannot open the chain: {e}") from None
        if files[0].get_media_size() != self.size:
            raise DiskError(f"{self.name}: libvhdi reads {files[0].get_media_size()} bytes, "
                            f"the metadata says {self.size}")
        return files

    @property
    def size(self) -> int:
        return self.layers[0].virtual_size

    def block_map(self, block: int) -> list[tuple[int, int, int | None]]:
        with self._map_lock:
            if block not in self._maps:
                self._maps[block] = sector_map(self.layers, block)
            return self._maps[block]

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self.size if length is None else min(self.size, start + length)
        bs = self.layers[0].block_size
        current: list[Any] | None = None
        for block in range(start // bs, -(-end // bs)):
            for s, n, src in self.block_map(block):
                lo, hi = max(s, start), min(s + n, end)
                if lo >= hi:
                    continue
                zero = src is None
                if current is not None and current[2] == zero and current[0] + current[1] == lo:
                    current[1] += hi - lo
                    continue
                if current is not None:
                    yield Extent(current[0], current[1], current[2])
                current = [lo, hi - lo, zero]
        if current is not None:
            yield Extent(current[0], current[1], current[2])

    def pread(self, offset: int, length: int) -> bytes:
        """The merged bytes: zeros where the BATs say so (no read), the rest from libvhdi."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{self.name}: read {offset}+{length} outside the disk ({self.size})")
        out = bytearray(length)
        for ext in self.extents(offset, length):
            if ext.zero:
                continue
            with self._lock:
                self.reads += 1
                data = self._files[0].read_buffer_at_offset(ext.length, ext.start)
            if len(data) != ext.length:
                raise DiskError(f"{self.name}: libvhdi read {len(data)} of {ext.length} bytes "
                                f"at {ext.start}")
            out[ext.start - offset:ext.end - offset] = data
        return bytes(out)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        view[:] = self.pread(offset, len(view))
        return len(view)

    def close(self) -> None:
        files, self._files = self._files, []
        for f in files:
            f.close()


@contextmanager
def serve_chain(path: Path) -> Iterator[Any]:
    """Serve the merged chain of ``path`` with rehost's NBD server on a private socket and
    yield one ``NbdDisk`` connected to it; stop both after."""
    from rehost.disks.nbd_disk import NbdDisk
    from rehost.disks.nbd_serve import NbdExportServer

    reader = ChainReader(path)
    try:
        with tempfile.TemporaryDirectory(prefix="rehost-vhdx-") as tmp:
            sock = os.path.join(tmp, "nbd.sock")
            with NbdExportServer(reader, sock, description=str(path)):
                disk = NbdDisk.connect(sock)
                disk.name = str(path)
                try:
                    yield disk
                finally:
                    disk.close()
    finally:
        reader.close()
