"""Per-block digests of the last point: what makes a hash-diff cycle cheap (design §5).

The cache is local to the vault, never part of the repository: losing it costs a re-read of
the previous point, never wrong data, because every file names the point it describes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import xxhash

from rehost.repository.repository import BLOCK_SIZE

DIGEST_SIZE = 8
ZERO_DIGEST = xxhash.xxh3_64_digest(bytes(BLOCK_SIZE))
_MAGIC = b"RHDG1\n"


def block_count(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


def zero_digests(nblocks: int) -> bytearray:
    """Digests of an all-zero disk: the "previous point" of an initial copy."""
    return bytearray(ZERO_DIGEST * nblocks)


def digest_blocks_py(data: memoryview | bytes) -> bytes:
    """XXH3-64 of every 4 KiB block of ``data`` (the last block may be short)."""
    h = xxhash.xxh3_64_digest
    mv = memoryview(data)
    return b"".join([h(mv[i : i + BLOCK_SIZE]) for i in range(0, len(mv), BLOCK_SIZE)])


def _native() -> tuple[Callable[[memoryview | bytes], bytes], str] | None:
    """The same digests in one native call per chunk, without the GIL (setup.py), if built."""
    try:
        from rehost.replication import _blockhash
    except ImportError:  # no C compiler or no libxxhash-dev where rehost was installed
        return None
    return _blockhash.digest_blocks, _blockhash.VARIANT


_NATIVE = _native()
#: "avx2" or "default" when the native digests are built; None when Python computes them
NATIVE_VARIANT = _NATIVE[1] if _NATIVE else None
#: ``digest_blocks_py``, or its native twin where built: the workers of a cycle digest side
#: by side only with the latter (python-xxhash holds the GIL through every block)
digest_blocks = _NATIVE[0] if _NATIVE else digest_blocks_py


class DigestCache:
    """One file per (machine, disk): magic, the point id, then 8 bytes per block."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, machine: str, disk: int) -> Path:
        return self.root / machine / f"disk{disk}.digests"

    def load(self, machine: str, disk: int, point_id: str, nblocks: int) -> bytearray | None:
        """The digests of ``point_id``, or None if the cache describes anything else."""
        try:
            data = self._path(machine, disk).read_bytes()
        except OSError:
            return None
        head = _MAGIC + point_id.encode() + b"\n"
        if not data.startswith(head) or len(data) - len(head) != nblocks * DIGEST_SIZE:
            return None
        return bytearray(memoryview(data)[len(head) :])

    def save(self, machine: str, disk: int, point_id: str, digests: bytes | bytearray) -> None:
        path = self._path(machine, disk)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC + point_id.encode() + b"\n")
            f.write(digests)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def drop(self, machine: str) -> None:
        d = self.root / machine
        if d.is_dir():
            for p in d.iterdir():
                p.unlink()
            d.rmdir()
