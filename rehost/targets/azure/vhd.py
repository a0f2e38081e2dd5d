"""The fixed VHD layout Azure requires: the raw disk, padded to a whole MiB, then a footer.

A fixed VHD is the disk's bytes followed by one 512-byte footer (Microsoft's "Virtual Hard
Disk Image Format Specification", Appendix: hard disk footer format). Azure accepts a page
blob or an upload as a disk only when the virtual size is a whole number of MiB, so the
data part is the disk rounded up to a MiB with zeros, and the blob is that + 512 bytes.

Footer fields (big-endian), as Hyper-V writes them:

| offset | size | field | value |
|---|---|---|---|
| 0 | 8 | cookie | ``conectix`` |
| 8 | 4 | features | 2 (reserved bit, always set) |
| 12 | 4 | file format version | 0x00010000 |
| 16 | 8 | data offset | all FF (fixed disks have no header) |
| 24 | 4 | timestamp | seconds since 2000-01-01 00:00 UTC |
| 28 | 4 | creator application | ``win `` (Hyper-V) |
| 32 | 4 | creator version | 0x000A0000 (Hyper-V 10.0) |
| 36 | 4 | creator host OS | ``Wi2k`` |
| 40 | 8 | original size | padded size |
| 48 | 8 | current size | padded size |
| 56 | 4 | geometry | cylinders (2), heads (1), sectors per track (1) |
| 60 | 4 | disk type | 2 (fixed) |
| 64 | 4 | checksum | one's complement of the byte sum of the footer, checksum field as 0 |
| 68 | 16 | unique id | a UUID |
| 84 | 1 | saved state | 0 |
| 85 | 427 | reserved | zeros |

Why ``win ``: QEMU (and other readers) take the size from the CHS geometry for footers made
by Virtual PC, which rounds it down; for ``win `` they trust the current size, which is the
exact padded size.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from rehost.errors import IntegrityError

FOOTER_SIZE = 512
SECTOR = 512
MiB = 1 << 20
COOKIE = b"conectix"
FEATURES = 2
VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000
CREATOR_HOST_OS = b"Wi2k"
DISK_TYPE_FIXED = 2
VHD_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: the largest disk the CHS geometry can describe (65535 cylinders, 16 heads, 255 sectors)
MAX_CHS_SECTORS = 65535 * 16 * 255

_FORMAT = ">8sII Q I4sI4s QQ HBB I I 16s B 427s"
assert struct.calcsize(_FORMAT) == FOOTER_SIZE


class VhdError(IntegrityError):
    """A VHD footer that Azure (or any reader) would refuse; the message says which field."""


def padded_size(size: int) -> int:
    """The virtual size Azure needs: ``size`` rounded up to a whole MiB."""
    if size <= 0:
        raise ValueError(f"a disk needs a positive size, not {size}")
    return -(-size // MiB) * MiB


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for ``size`` bytes, by the VHD specification's
    algorithm (it rounds down; larger disks than CHS can say get the maximum geometry)."""
    total = min(size // SECTOR, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def checksum(footer: bytes) -> int:
    """One's complement of the sum of all bytes, the checksum field (64..67) counted as 0."""
    return ~(sum(footer[:64]) + sum(footer[68:FOOTER_SIZE])) & 0xFFFFFFFF


@dataclass(frozen=True)
class VhdFooter:
    current_size: int
    original_size: int
    geometry: tuple[int, int, int]
    disk_type: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: bytes
    unique_id: uuid.UUID
    features: int = FEATURES
    version: int = VERSION
    data_offset: int = NO_DATA_OFFSET
    saved_state: int = 0

    def pack(self) -> bytes:
        c, h, s = self.geometry
        raw = struct.pack(
            _FORMAT, COOKIE, self.features, self.version, self.data_offset, self.timestamp,
            self.creator_app, self.creator_version, self.creator_host_os, self.original_size,
            self.current_size, c, h, s, self.disk_type, 0, self.unique_id.bytes, self.saved_state,
            b"",
        )
        return raw[:64] + struct.pack(">I", checksum(raw)) + raw[68:]


def make_footer(size: int, *, unique_id: uuid.UUID | None = None, when: datetime | None = None) -> bytes:
    """The footer of a fixed VHD holding a disk of ``size`` bytes (padded to a whole MiB)."""
    padded = padded_size(size)
    stamp = int(((when or datetime.now(UTC)) - VHD_EPOCH).total_seconds())
    return VhdFooter(
        current_size=padded, original_size=padded, geometry=chs_geometry(padded),
        disk_type=DISK_TYPE_FIXED, timestamp=max(0, stamp) & 0xFFFFFFFF, creator_app=CREATOR_APP,
        creator_version=CREATOR_VERSION, creator_host_os=CREATOR_HOST_OS,
        unique_id=unique_id or uuid.uuid4(),
    ).pack()


def parse_footer(data: bytes) -> VhdFooter:
    """Decode and check a footer: cookie, checksum, fixed type; ``VhdError`` says what is wrong."""
    if len(data) != FOOTER_SIZE:
        raise VhdError(f"a VHD footer is {FOOTER_SIZE} bytes, not {len(data)}")
    (cookie, features, version, data_offset, stamp, app, cver, host, orig, cur, c, h, s, dtype,
     csum, uid, saved, _) = struct.unpack(_FORMAT, data)
    if cookie != COOKIE:
        raise VhdError(f"not a VHD footer: cookie {cookie!r}, expected {COOKIE!r}")
    if csum != checksum(data):
        raise VhdError(f"VHD footer checksum {csum:#010x} is wrong (computed {checksum(data):#010x})")
    if dtype != DISK_TYPE_FIXED:
        raise VhdError(f"VHD disk type {dtype} is not fixed (2): Azure takes fixed VHDs only")
    return VhdFooter(cur, orig, (c, h, s), dtype, stamp, app, cver, host, uuid.UUID(bytes=uid),
                     features, version, data_offset, saved)


def check_fixed_vhd(footer: bytes, file_size: int) -> VhdFooter:
    """Check a footer as Azure would for a file (or blob) of ``file_size`` bytes: a fixed
    VHD whose data part is a whole number of MiB and exactly fills the file."""
    f = parse_footer(footer)
    if f.current_size % MiB:
        raise VhdError(f"VHD size {f.current_size} is not a whole number of MiB, as Azure requires")
    if f.current_size + FOOTER_SIZE != file_size:
        raise VhdError(f"VHD size {f.current_size} + {FOOTER_SIZE} footer bytes does not match "
                       f"the file's {file_size} bytes")
    return f
