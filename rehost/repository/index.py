"""The index: which blob lives where (design §2). Loaded whole into memory at open."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rehost.errors import IntegrityError
from rehost.repository.crypto import Sealer
from rehost.repository.pack import BlobEntry

INDEX_AAD = b"rehost-index"


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    offset: int
    length: int
    raw_length: int


def encode_index(packs: Iterable[tuple[str, list[BlobEntry]]], sealer: Sealer) -> tuple[str, bytes]:
    doc = {"packs": [{"id": pid, "blobs": [e.to_json() for e in entries]} for pid, entries in packs]}
    data = sealer.seal(json.dumps(doc).encode(), INDEX_AAD)
    return hashlib.sha256(data).hexdigest(), data


def decode_index(data: bytes, sealer: Sealer, name: str) -> Iterator[tuple[str, list[BlobEntry]]]:
    raw = sealer.open(data, INDEX_AAD, f"index file {name}")
    try:
        doc = json.loads(raw)
        packs = [(str(p["id"]), [BlobEntry.from_json(b) for b in p["blobs"]]) for p in doc["packs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"index file {name} is malformed: {e}") from None
    yield from packs


class Index:
    """blob id -> location, plus which index files name which packs (for prune and check)."""

    def __init__(self) -> None:
        self.blobs: dict[str, BlobLocation] = {}
        self.packs: dict[str, list[BlobEntry]] = {}
        self.files: dict[str, list[str]] = {}  # index file name -> pack ids it lists

    def add_file(self, name: str, packs: Iterable[tuple[str, list[BlobEntry]]]) -> None:
        pack_ids = []
        for pack_id, entries in packs:
            pack_ids.append(pack_id)
            self.add_pack(pack_id, entries)
        self.files[name] = pack_ids

    def add_pack(self, pack_id: str, entries: list[BlobEntry]) -> None:
        self.packs[pack_id] = entries
        for e in entries:
            self.blobs.setdefault(e.id, BlobLocation(pack_id, e.offset, e.length, e.raw_length))

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self.blobs

    def get(self, blob_id: str) -> BlobLocation | None:
        return self.blobs.get(blob_id)
