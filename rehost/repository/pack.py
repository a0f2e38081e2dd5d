"""Packs: many sealed blobs in one object, with a sealed trailer listing them (design §2)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct
import threading
from collections.abc import Sequence
from typing import NamedTuple

import blake3

from rehost.errors import IntegrityError
from rehost.repository.aligned import thread_buffer
from rehost.repository.crypto import Sealer

#: Close a pack at about this size: object stores prefer tens of MiB to millions of objects.
PACK_TARGET = 16 * 1024 * 1024
TRAILER_AAD = b"rehost-pack-trailer"
_LEN = struct.Struct("<I")
#: blobs at least this long are copied into a pack's buffer without the GIL
_COPY_FREE = 64 * 1024


class BlobEntry(NamedTuple):
    """Where a blob lives inside its pack, and its plaintext size. (A tuple: a scattered delta
    makes tens of thousands, and a frozen dataclass took twice as long to build.)"""

    id: str
    offset: int
    length: int
    raw_length: int

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "offset": self.offset, "length": self.length,
                "raw_length": self.raw_length}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> BlobEntry:
        return cls(str(d["id"]), int(d["offset"]), int(d["length"]),  # type: ignore[call-overload]
                   int(d["raw_length"]))  # type: ignore[call-overload]


def pack_id_of(data: bytes | memoryview) -> str:
    """A pack's name: the BLAKE3 (unkeyed) of its bytes, which anyone can verify without a key.
    SHA-256 named packs until 2026-12-07: it ran at 1.7 GB/s here against BLAKE3's 4.6, and
    an initial copy hashes 1.5 GiB of packs in the threads that also write them."""
    return blake3.blake3(data).hexdigest()


def names_pack(pack_id: str, data: bytes) -> bool:
    """Whether ``pack_id`` is the name of these bytes: their BLAKE3, or (a pack stored by an
    older rehost) their SHA-256."""
    return blake3.blake3(data).hexdigest() == pack_id or hashlib.sha256(data).hexdigest() == pack_id


#: one entry as ``json.dumps`` writes its ``to_json``
_ENTRY_JSON = '{"id": "%s", "offset": %d, "length": %d, "raw_length": %d}'


def entries_json(entries: Sequence[BlobEntry]) -> str:
    """``json.dumps([e.to_json() for e in entries])``, the same text in a fifth of the time:
    a scattered delta's 52,428 blobs took 0.13 s of JSON per pack trailer and as much per
    index file, holding the GIL the cycle's workers wait for. Blob ids are hex digits, which
    JSON writes as they are; an entry with any other id goes through ``json``."""
    ids = "".join([e.id for e in entries])
    if not (ids.isascii() and ids.isalnum()):
        return json.dumps([e.to_json() for e in entries])
    return "[" + ", ".join([_ENTRY_JSON % e for e in entries]) + "]"


class PackWriter:
    """Accumulates sealed blobs in memory until the pack is big enough to store."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.entries: list[BlobEntry] = []
        self.size = 0
        #: it holds blobs stored uncompressed, for prune to compress (index.py: deferred)
        self.deferred = False
        #: ``entries_json`` of the entries, once ``finish`` made it (its index file uses it too)
        self.entries_text = ""

    def add(self, blob_id: str, sealed: bytes, raw_length: int) -> None:
        self.entries.append(BlobEntry(blob_id, self.size, len(sealed), raw_length))
        self._parts.append(sealed)
        self.size += len(sealed)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, sealer: Sealer) -> tuple[str, memoryview]:
        """The pack's bytes and its id (``pack_id_of``). The bytes are laid out once, in a
        page-aligned buffer of this thread's with room to the next ``aligned.ALIGN`` multiple, so
        a local repository writes them with ``O_DIRECT`` as they are (``storage.local``); they
        are valid until this thread's next ``finish``. One copy without the GIL, where a
        ``b"".join`` and a copy into an aligned buffer held it 2-3 ms a pack (issue 17)."""
        self.entries_text = entries_json(self.entries)
        trailer = sealer.seal(self.entries_text.encode(), TRAILER_AAD)
        parts, self._parts = [*self._parts, trailer, _LEN.pack(len(trailer))], []
        size = self.size + len(trailer) + _LEN.size
        buf = thread_buffer(_layouts, size, least=PACK_TARGET + (2 << 20))
        view = memoryview(buf)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        at = 0
        for part in parts:
            n = len(part)
            if n >= _COPY_FREE:
                ctypes.memmove(base + at, part, n)
            else:  # a call per 4 KiB blob costs more than the copy
                view[at : at + n] = part
            at += n
        data = view[:size]
        return pack_id_of(data), data


_layouts = threading.local()  # the packs laid out by each thread (aligned.thread_buffer)


def read_trailer(pack: bytes, sealer: Sealer, pack_id: str) -> list[BlobEntry]:
    """The blob list of a whole pack; used by check and by index rebuilds."""
    if len(pack) < _LEN.size:
        raise IntegrityError(f"pack {pack_id} is truncated")
    (tlen,) = _LEN.unpack_from(pack, len(pack) - _LEN.size)
    if tlen > len(pack) - _LEN.size:
        raise IntegrityError(f"pack {pack_id} is truncated (trailer length {tlen})")
    raw = sealer.open(pack[-_LEN.size - tlen : -_LEN.size], TRAILER_AAD, f"trailer of pack {pack_id}")
    try:
        return [BlobEntry.from_json(d) for d in json.loads(raw)]
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"trailer of pack {pack_id} is malformed: {e}") from None
