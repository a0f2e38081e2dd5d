"""Which pages of a replica page blob change between two recovery points: pure logic.

The deltas come from rehost's own manifests, never from the storage account: Azurite's
page-range diff ignores ``prevsnapshot`` and returns every written range, and even Azure's
diff only says what was *written*, not what differs. Two resolved maps
(``Repository.resolve_map``) describe two disks exactly, so the bytes that may differ are
where the maps differ: a byte is unchanged when both maps read it as zeros, or both read it
from the same blob at the same blob offset (blobs are content-addressed: the same id is the
same bytes). Anything else is changed; that can over-count (equal bytes from other blobs)
and never under-count.

Requests follow Azure's Put Page rules, which Azurite does not enforce: 512-byte aligned
offsets and lengths, at most 4 MiB per write. Ranges whose pages the new point reads as zero
are cleared (Clear Page, no bytes sent), whole pages only; a page that is partly data is
written whole, its bytes read from the point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rehost.repository.manifest import MapEntry

PAGE = 512
MiB = 1 << 20
#: Azure's limit for one Put Page with data
MAX_PUT = 4 * MiB
#: Clear Page may span the whole blob in Azure; rehost keeps each clear to 1 GiB so one
#: request (and one retry) stays bounded
MAX_CLEAR = 1 << 30

Key = tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One Put Page (``clear`` False: the point's bytes) or Clear Page of the replica."""

    offset: int
    length: int
    clear: bool

    @property
    def end(self) -> int:
        return self.offset + self.length

    def check(self) -> None:
        """Azure's rules, enforced here because Azurite does not."""
        if self.offset % PAGE or self.length % PAGE or self.length <= 0:
            raise ValueError(f"page request {self.offset}+{self.length} is not 512-byte aligned")
        if not self.clear and self.length > MAX_PUT:
            raise ValueError(f"page write of {self.length} bytes is over Azure's 4 MiB limit")


def _cover(entries: Sequence[MapEntry], size: int) -> Iterator[tuple[int, int, Key]]:
    """(start, end, key) pieces covering [0, size): key None for zeros, else (blob, shift)."""
    pos = 0
    for e in entries:
        if e.offset >= size:
            break
        if e.offset > pos:
            yield pos, e.offset, None
        end = min(e.end, size)
        yield e.offset, end, None if e.blob is None else (e.blob, e.blob_offset - e.offset)
        pos = end
    if pos < size:
        yield pos, size, None


def changed_ranges(
    old: Sequence[MapEntry] | None, new: Sequence[MapEntry], size: int
) -> list[tuple[int, int]]:
    """Merged [start, end) byte ranges of [0, size) where ``new`` may differ from ``old``.
    ``old`` None means the replica's content is unknown: everything is changed."""
    if old is None:
        return [(0, size)] if size > 0 else []
    out: list[tuple[int, int]] = []
    a, b = _cover(old, size), _cover(new, size)
    oa, ob = next(a, None), next(b, None)
    pos = 0
    while oa is not None and ob is not None:
        end = min(oa[1], ob[1])
        if oa[2] != ob[2] and end > pos:
            if out and out[-1][1] == pos:
                out[-1] = (out[-1][0], end)
            else:
                out.append((pos, end))
        pos = end
        if oa[1] == end:
            oa = next(a, None)
        if ob[1] == end:
            ob = next(b, None)
    return out


def _aligned(ranges: Sequence[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Each range widened to whole pages (never past ``limit``), overlaps merged."""
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        s, e = s - s % PAGE, min(limit, -(-e // PAGE) * PAGE)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out


def _data_pages(new: Sequence[MapEntry], limit: int) -> list[tuple[int, int]]:
    return _aligned([(e.offset, e.end) for e in new if e.blob is not None], limit)


def _cut(start: int, end: int, clear: bool) -> Iterator[PageRequest]:
    step = MAX_CLEAR if clear else MAX_PUT
    for off in range(start, end, step):
        yield PageRequest(off, min(step, end - off), clear)


def page_requests(old: Sequence[MapEntry] | None, new: Sequence[MapEntry], size: int) -> list[PageRequest]:
    """The Put/Clear Page requests that turn a replica of ``old`` into one of ``new`` (a
    disk of ``size`` bytes), in offset order. Pages the new point has no data on are
    cleared; every other changed page is written whole."""
    limit = -(-size // PAGE) * PAGE
    changed = _aligned(changed_ranges(old, new, size), limit)
    data = _data_pages(new, limit)
    out: list[PageRequest] = []
    i = 0
    for s, e in changed:
        pos = s
        while i < len(data) and data[i][1] <= s:
            i += 1
        j = i
        while pos < e:
            if j < len(data) and data[j][0] < e:
                ds, de = max(data[j][0], pos), min(data[j][1], e)
                if ds > pos:
                    out.extend(_cut(pos, ds, True))
                out.extend(_cut(max(ds, pos), de, False))
                pos = de
                j += 1
            else:
                out.extend(_cut(pos, e, True))
                pos = e
    return out
