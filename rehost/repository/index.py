"""The index: which blob lives where (design §2). Loaded whole into memory at open.

Every command that opens the repository loads it, and a scattered delta adds tens of
thousands of blobs, so loading does no per-blob Python work: each pack's entries are kept as
the four columns JSON gives (ids, offsets, lengths, plaintext lengths), checked for their
types by whole column, and the blob -> (pack, position) map is built by ``dict.update``.
A ``BlobEntry`` or ``BlobLocation`` is made only when asked for (docs/benchmarks.md: 0.35 s
for 117k blobs before, per replicate).

A pack may be marked *deferred*: its blobs were stored without compression (an initial copy
on local storage, ``Writer.compress_later``) and ``prune`` has yet to compress them. Readers
older than the mark ignore it; it is a to-do, not a format: the blobs read the same either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, KeysView, Mapping
from dataclasses import dataclass
from itertools import count, repeat
from typing import NamedTuple

from rehost.errors import IntegrityError
from rehost.repository.crypto import Sealer
from rehost.repository.pack import BlobEntry, entries_json

INDEX_AAD = b"rehost-index"

#: one pack's entries by column: ids, offsets, lengths, raw lengths (position i is one blob)
Columns = tuple[list[str], list[int], list[int], list[int]]
_FIELDS = ("id", "offset", "length", "raw_length")


class IndexedPack(NamedTuple):
    """One pack as an index file lists it."""

    id: str
    columns: Columns
    deferred: bool = False  # its blobs await compression (see the module's docstring)


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    offset: int
    length: int
    raw_length: int


_DEFERRED = ', "deferred": true'


def encode_index(packs: Iterable[tuple[str, list[BlobEntry]]], sealer: Sealer,
                 deferred: Collection[str] = (), texts: Mapping[str, str] | None = None) -> tuple[str, bytes]:
    """``deferred``: the ids of packs to mark deferred; ``texts``: the ``entries_json`` of a
    pack made already (its trailer's). The text is what ``json.dumps`` makes of
    ``{"packs": [{"id": ..., "blobs": [...], "deferred": true}]}``, written faster."""
    texts = texts or {}
    packs_json = [
        '{"id": ' + json.dumps(pid) + ', "blobs": ' + (texts.get(pid) or entries_json(entries))
        + (_DEFERRED if pid in deferred else "") + "}"
        for pid, entries in packs
    ]
    data = sealer.seal(('{"packs": [' + ", ".join(packs_json) + "]}").encode(), INDEX_AAD)
    return hashlib.sha256(data).hexdigest(), data


def decode_index(data: bytes, sealer: Sealer, name: str) -> Iterator[IndexedPack]:
    raw = sealer.open(data, INDEX_AAD, f"index file {name}")
    try:
        doc = json.loads(raw)
        packs = [IndexedPack(_text(p["id"]), _columns(p["blobs"]), p.get("deferred") is True)
                 for p in doc["packs"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"index file {name} is malformed: {e}") from None
    yield from packs


def _text(value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{value!r} is not a string")
    return value


def _columns(blobs: list[dict[str, object]]) -> Columns:
    """The entries of one pack as columns, each column's type checked in one pass."""
    ids, offsets, lengths, raws = ([b[f] for b in blobs] for f in _FIELDS)
    if not set(map(type, ids)) <= {str}:
        raise TypeError("a blob id is not a string")
    for column in (offsets, lengths, raws):
        if not set(map(type, column)) <= {int}:
            raise TypeError("a blob offset or length is not an integer")
    return ids, offsets, lengths, raws  # type: ignore[return-value]


def columns_of(entries: list[BlobEntry]) -> Columns:
    if not entries:
        return [], [], [], []
    ids, offsets, lengths, raws = (list(c) for c in zip(*entries, strict=True))
    return ids, offsets, lengths, raws


class Index:
    """blob id -> location, plus which index files name which packs (for prune and check)."""

    def __init__(self) -> None:
        #: blob id -> (pack id, position in that pack's columns)
        self.blobs: dict[str, tuple[str, int]] = {}
        self._packs: dict[str, Columns] = {}
        self.files: dict[str, list[str]] = {}  # index file name -> pack ids it lists
        #: packs whose blobs await compression (the module's docstring)
        self.deferred: set[str] = set()

    def add_file(self, name: str, packs: Iterable[IndexedPack]) -> None:
        pack_ids = []
        for pack_id, columns, deferred in packs:
            pack_ids.append(pack_id)
            self.add_pack(pack_id, columns, deferred=deferred)
        self.files[name] = pack_ids

    def add_pack(self, pack_id: str, columns: Columns, *, deferred: bool = False) -> None:
        """A blob stored in two packs keeps the location it was first found at."""
        self._packs[pack_id] = columns
        if deferred:
            self.deferred.add(pack_id)
        found = dict(zip(columns[0], zip(repeat(pack_id), count()), strict=False))
        if not self.blobs.keys().isdisjoint(found):
            for known in self.blobs.keys() & found.keys():
                del found[known]
        self.blobs.update(found)

    @property
    def packs(self) -> dict[str, list[BlobEntry]]:
        """Every pack's entries (made on each call: for check and prune, which walk them all)."""
        return {pid: [BlobEntry(*e) for e in zip(*cols, strict=True)] for pid, cols in self._packs.items()}

    @property
    def pack_ids(self) -> KeysView[str]:
        return self._packs.keys()

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self.blobs

    def get(self, blob_id: str) -> BlobLocation | None:
        where = self.blobs.get(blob_id)
        if where is None:
            return None
        pack, i = where
        _, offsets, lengths, raws = self._packs[pack]
        return BlobLocation(pack, offsets[i], lengths[i], raws[i])
