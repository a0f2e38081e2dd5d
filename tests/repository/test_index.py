"""The index as loaded: columns per pack, locations made on demand, damage named."""

from __future__ import annotations

import json

import pytest

from rehost.errors import IntegrityError
from rehost.repository.crypto import KeyMaterial, Sealer
from rehost.repository.index import INDEX_AAD, Index, columns_of, decode_index, encode_index
from rehost.repository.pack import BlobEntry

SEALER = Sealer(KeyMaterial.generate(encrypted=True))


def _entries(prefix: str, n: int) -> list[BlobEntry]:
    return [BlobEntry(f"{prefix}{i:04d}", i * 100, 90 + i, 4096) for i in range(n)]


def test_an_encoded_index_decodes_to_the_same_entries_and_locations() -> None:
    packs = [("pack-a", _entries("a", 3)), ("pack-b", _entries("b", 2)), ("pack-empty", [])]
    name, data = encode_index(packs, SEALER)
    index = Index()
    index.add_file(name, decode_index(data, SEALER, name))
    assert index.packs == dict(packs)
    assert set(index.pack_ids) == {"pack-a", "pack-b", "pack-empty"}
    assert index.files == {name: ["pack-a", "pack-b", "pack-empty"]}
    loc = index.get("b0001")
    assert loc is not None
    assert (loc.pack, loc.offset, loc.length, loc.raw_length) == ("pack-b", 100, 91, 4096)
    assert index.get("nothing") is None
    assert "a0002" in index and "nothing" not in index


def test_a_blob_in_two_packs_keeps_the_location_it_was_first_found_at() -> None:
    index = Index()
    index.add_pack("first", columns_of([BlobEntry("x", 0, 10, 20), BlobEntry("y", 10, 5, 5)]))
    index.add_pack("second", columns_of([BlobEntry("z", 0, 7, 7), BlobEntry("x", 7, 10, 20)]))
    x = index.get("x")
    assert x is not None and (x.pack, x.offset) == ("first", 0)
    z = index.get("z")
    assert z is not None and (z.pack, z.offset) == ("second", 0)
    assert len(index.packs["second"]) == 2  # the pack still lists both


@pytest.mark.parametrize(
    "blob",
    [
        {"id": 7, "offset": 0, "length": 1, "raw_length": 1},
        {"id": "a", "offset": "0", "length": 1, "raw_length": 1},
        {"id": "a", "offset": 0, "length": 1.5, "raw_length": 1},
        {"id": "a", "offset": 0, "length": 1, "raw_length": True},
        {"id": "a", "offset": 0, "length": 1},
        ["a", 0, 1, 1],
    ],
)
def test_an_index_entry_of_the_wrong_shape_is_named_damage(blob: object) -> None:
    data = SEALER.seal(json.dumps({"packs": [{"id": "p", "blobs": [blob]}]}).encode(), INDEX_AAD)
    with pytest.raises(IntegrityError, match="index file bad is malformed"):
        list(decode_index(data, SEALER, "bad"))


def test_an_index_is_the_text_json_makes_of_it_also_for_ids_json_must_escape() -> None:
    """``encode_index`` and ``entries_json`` write the JSON by hand (json.dumps of dicts was
    most of a scattered delta's pack bookkeeping): the text must be json's, byte for byte."""
    odd = [BlobEntry('quote"back\\slash\u00e9\n', 1, 2, 3), *_entries("c", 2)]
    packs = [("pack-a", _entries("a", 3)), ("pack-odd", odd), ("pack-empty", [])]
    _, data = encode_index(packs, SEALER, deferred={"pack-odd"})
    doc = {"packs": [{"id": pid, "blobs": [e.to_json() for e in entries],
                      **({"deferred": True} if pid == "pack-odd" else {})} for pid, entries in packs]}
    assert SEALER.open(data, INDEX_AAD) == json.dumps(doc).encode()
    index = Index()
    index.add_file("x", decode_index(data, SEALER, "x"))
    assert index.packs["pack-odd"] == odd
