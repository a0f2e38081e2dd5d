"""The extent-map algebra, checked against a byte-by-byte model on random maps."""

from __future__ import annotations

import itertools
import random

import pytest

from rehost.repository.crypto import KeyMaterial, Sealer
from rehost.repository.manifest import (
    Consistency,
    DiskMap,
    MapEntry,
    RecoveryPoint,
    decode_point,
    encode_point,
    overlay,
)

SIZE = 64


def _model(entries: list[MapEntry]) -> list[tuple[str, int] | None]:
    img: list[tuple[str, int] | None] = [None] * SIZE
    for e in entries:
        for k in range(e.length):
            img[e.offset + k] = None if e.blob is None else (e.blob, e.blob_offset + k)
    return img


def _random_map(rng: random.Random, *, zeros: bool) -> list[MapEntry]:
    out, pos = [], 0
    while True:
        pos += rng.randint(0, 5)
        if pos >= SIZE:
            return out
        n = min(rng.randint(1, 12), SIZE - pos)
        blob = None if zeros and rng.random() < 0.3 else f"b{rng.randint(0, 3)}"
        out.append(MapEntry(pos, n, blob, rng.randint(0, 7) if blob else 0))
        pos += n


@pytest.mark.parametrize("seed", range(20))
def test_overlay_matches_byte_model(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        base, delta = _random_map(rng, zeros=False), _random_map(rng, zeros=True)
        expected = _model(base)
        for e in delta:
            for k in range(e.length):
                expected[e.offset + k] = None if e.blob is None else (e.blob, e.blob_offset + k)
        got = overlay(base, delta)
        assert _model(got) == expected
        assert all(a.end <= b.offset for a, b in itertools.pairwise(got))
        assert all(e.blob is not None and e.length > 0 for e in got)


def test_merged_deltas_equal_sequential_application() -> None:
    """Differential deltas: base+(d1 merged d2) == (base+d1)+d2, zero entries included."""
    rng = random.Random(7)
    for _ in range(500):
        base = _random_map(rng, zeros=False)
        d1, d2 = _random_map(rng, zeros=True), _random_map(rng, zeros=True)
        merged = overlay(d1, d2, keep_zero=True)
        assert _model(overlay(base, merged)) == _model(overlay(overlay(base, d1), d2))


@pytest.mark.parametrize("encrypted", [False, True])
def test_point_round_trip_and_content_address(encrypted: bool) -> None:
    sealer = Sealer(KeyMaterial.generate(encrypted=encrypted))
    p = RecoveryPoint(
        machine="m1", time="2026-11-26T10:00:00.000000Z", consistency=Consistency.APP,
        parent=None, sequence=3, source={"kind": "image"},
        disks=[DiskMap(0, 1 << 20, None, [MapEntry(0, 4096, "ab" * 32, 0)]),
               DiskMap(1, 1 << 20, "cd" * 32, [MapEntry(8192, 4096, None, 0)])],
    )
    pid, data = encode_point(p, sealer)
    back = decode_point(data, sealer, pid)
    assert back.disks == p.disks and back.consistency is Consistency.APP and back.id == pid
    import hashlib

    assert hashlib.sha256(data).hexdigest() == pid
