"""Resuming an unfinished cycle without fetching again what it already stored.

A cycle cut short (link down, agent or server killed) commits no point, but the blobs it
sealed may already be in the repository. The journal lists, per chunk the cycle finished,
a fingerprint of the chunk's 4 KiB digests and the map entries it produced. The retry, from the same parent,
asks the source for the digests of the blocks it will send (the agent computes them anyway
to find changes); a chunk whose expected digests equal the journal's, and whose blobs are
all in the repository's index, is taken from the journal instead of the network.

The journal lives in the vault's digest cache (``<cache>/<machine>/resume.jsonl``), is
appended line by line (a torn last line is ignored), and is dropped when a point commits
or when the next cycle starts from another parent. Trust is the same as for the hash-diff
itself: equal 64-bit XXH3 digests of 4 KiB blocks mean equal blocks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from pathlib import Path
from typing import IO

from rehost.repository.manifest import MapEntry


class ResumeJournal:
    def __init__(self, root: Path, machine: str, parent: str | None) -> None:
        self.path = root / machine / "resume.jsonl"
        self.parent = parent or ""
        self.chunks: dict[tuple[int, int], tuple[str, list[MapEntry], int]] = {}
        self._file: IO[str] | None = None
        self._load()

    @staticmethod
    def pending(root: Path, machine: str, parent: str | None) -> bool:
        """An unfinished cycle from ``parent`` left something to resume."""
        return bool(ResumeJournal(root, machine, parent).chunks)

    def _load(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        if not lines or lines[0] != json.dumps({"parent": self.parent}):
            return  # another parent's leftovers: useless, replaced when this cycle writes
        for line in lines[1:]:
            try:
                r = json.loads(line)
                entries = [MapEntry(int(o), int(n), b, int(bo)) for o, n, b, bo in r["e"]]
                self.chunks[(int(r["d"]), int(r["o"]))] = (str(r["h"]), entries, int(r["c"]))
            except (ValueError, KeyError, TypeError):
                break  # a torn last line (killed while writing)

    def lookup(
        self, disk: int, offset: int, expected: bytes | bytearray, known: Container[str]
    ) -> tuple[list[MapEntry], int] | None:
        """The chunk's (map entries, changed bytes) if it can be reused as is: the source's
        digests of the chunk now are those it had when it was stored."""
        hit = self.chunks.get((disk, offset))
        if hit is None or hit[0] != _fingerprint(expected):
            return None
        if any(e.blob is not None and e.blob not in known for e in hit[1]):
            return None  # sealed but never stored (the process died before the pack)
        return hit[1], hit[2]

    def record(self, disk: int, offset: int, digests: bytes, entries: list[MapEntry], changed: int) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.chunks
            # line-buffered: a kill -9 loses at most the line being written
            self._file = open(self.path, "w" if fresh else "a", buffering=1)  # noqa: SIM115
            if fresh:
                self._file.write(json.dumps({"parent": self.parent}) + "\n")
        h = _fingerprint(digests)
        line = {"d": disk, "o": offset, "h": h, "e": [list(e) for e in entries], "c": changed}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.chunks[(disk, offset)] = (h, entries, changed)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """The point committed: nothing is left to resume."""
        self.close()
        self.chunks.clear()
        self.path.unlink(missing_ok=True)


def _fingerprint(digests: bytes | bytearray) -> str:
    """A chunk's block digests in 16 bytes (the journal stays ~50 bytes per MiB)."""
    return hashlib.blake2b(digests, digest_size=16).hexdigest()
