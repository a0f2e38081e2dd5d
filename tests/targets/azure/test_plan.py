"""The page plan on hand-made maps, checked against a byte-by-byte model of both disks."""

from __future__ import annotations

import itertools
import random

from rehost.repository.manifest import MapEntry
from rehost.targets.azure.plan import MAX_PUT, PAGE, PageRequest, changed_ranges, page_requests

MiB = 1 << 20


def _random_map(rng: random.Random, size: int, blobs: list[str]) -> list[MapEntry]:
    out: list[MapEntry] = []
    pos = 0
    while True:
        pos += rng.choice([0, rng.randrange(1, 3000), rng.randrange(1, 3 * MiB)])
        if pos >= size:
            return out
        n = min(rng.randrange(1, 6 * MiB), size - pos)
        blob = None if rng.random() < 0.15 else rng.choice(blobs)
        out.append(MapEntry(pos, n, blob, rng.choice([0, 100])))
        pos += n


def _model(entries: list[MapEntry], size: int) -> list[tuple[str, int] | None]:
    """Per byte of a small disk: None for zero, (blob, byte of blob) otherwise."""
    disk: list[tuple[str, int] | None] = [None] * size
    for e in entries:
        if e.blob is not None:
            for k in range(e.length):
                disk[e.offset + k] = (e.blob, e.blob_offset + k)
    return disk


def test_plan_turns_old_into_new_and_follows_azure_rules() -> None:
    rng = random.Random(4)
    for _ in range(40):
        size = rng.randrange(1, 12 * MiB) // 64  # a smaller disk: the model is per byte
        scale = 64
        old = _random_map(rng, size * scale, ["a", "b", "c"])
        new = _random_map(rng, size * scale, ["a", "b", "d"])
        reqs = page_requests(old, new, size * scale)
        # Rules: aligned, in order, not overlapping, writes <= 4 MiB.
        for r in reqs:
            r.check()
        assert all(x.end <= y.offset for x, y in itertools.pairwise(reqs))
        # Every byte that differs is covered, and cleared only if the new disk has no data on its page.
        changed = changed_ranges(old, new, size * scale)
        covered = [(r.offset, r.end, r.clear) for r in reqs]
        for s, e in changed:
            for probe in (s, e - 1, (s + e) // 2):
                hit = [c for c in covered if c[0] <= probe < c[1]]
                assert len(hit) == 1, (probe, changed)
                if hit[0][2]:
                    page = probe - probe % PAGE
                    assert not any(x.blob and x.offset < page + PAGE and x.end > page for x in new)


def test_changed_ranges_against_a_byte_model() -> None:
    rng = random.Random(9)
    for _ in range(60):
        size = rng.randrange(1, 40_000)
        old = [MapEntry(e.offset // 300, max(1, e.length // 300), e.blob, e.blob_offset)
               for e in _random_map(rng, size * 300, ["a", "b"])]
        new = [MapEntry(e.offset // 300, max(1, e.length // 300), e.blob, e.blob_offset)
               for e in _random_map(rng, size * 300, ["a", "c"])]
        old = _fix(old, size)
        new = _fix(new, size)
        mo, mn = _model(old, size), _model(new, size)
        want = [i for i in range(size) if mo[i] != mn[i]]
        got = [i for s, e in changed_ranges(old, new, size) for i in range(s, e)]
        assert got == want


def _fix(entries: list[MapEntry], size: int) -> list[MapEntry]:
    """Drop overlaps the integer scaling made and clip to the disk."""
    out: list[MapEntry] = []
    pos = 0
    for e in entries:
        if e.offset < pos or e.offset >= size:
            continue
        n = min(e.length, size - e.offset)
        out.append(MapEntry(e.offset, n, e.blob, e.blob_offset))
        pos = e.offset + n
    return out


def test_unchanged_and_unknown() -> None:
    m = [MapEntry(0, 5000, "a", 0), MapEntry(9000, 7 * MiB, "b", 12)]
    assert page_requests(m, m, 8 * MiB) == []
    full = page_requests(None, m, 8 * MiB)
    assert full[0] == PageRequest(0, 5120, False)  # the partial page is written whole
    assert full[1] == PageRequest(5120, 3584, True)  # the zero pages between are cleared
    assert all(r.length <= MAX_PUT for r in full if not r.clear)
    assert full[-1].end == 8 * MiB
    assert page_requests([], m, 8 * MiB)[0] == PageRequest(0, 5120, False)
    assert not any(r.clear for r in page_requests([], m, 8 * MiB))  # a fresh blob: only data


def test_requests_over_azure_limits_are_refused() -> None:
    import pytest

    for bad in (PageRequest(0, MAX_PUT + PAGE, False), PageRequest(100, PAGE, False),
                PageRequest(0, 1000, True), PageRequest(0, 0, False)):
        with pytest.raises(ValueError):
            bad.check()
    PageRequest(0, 64 * MiB, True).check()  # clears may be larger than 4 MiB
