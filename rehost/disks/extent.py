"""Extents: the unit the data path is built on (ask for extents, never read holes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Extent:
    """A byte range of a disk; ``zero`` is True when it reads as zeros (hole or zero flag)."""

    start: int
    length: int
    zero: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length
