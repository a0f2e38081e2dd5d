"""The storage contract every repository backend implements.

Modelled on restic's backend interface: a flat namespace of immutable objects grouped by
kind. Objects are written once (``save`` refuses to overwrite) and only ``prune`` removes
them, so a backend never needs read-modify-write and a crash can leave at most an object
nobody references yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Kind(StrEnum):
    """Object kinds; each is a separate namespace (a folder in the local backend)."""

    CONFIG = "config"  # the repository config (exactly one object, name "config")
    KEYS = "keys"  # password-protected master keys
    DATA = "data"  # packs
    INDEX = "index"  # index files: which blob lives in which pack
    POINTS = "points"  # recovery-point manifests
    LOCKS = "locks"  # lock files (the only kind whose objects come and go freely)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    kind: Kind
    name: str
    size: int


@runtime_checkable
class Storage(Protocol):
    """A place to keep repository objects.

    Names are lowercase hex strings or simple tokens chosen by the repository, never user
    input. ``save`` is atomic: after a crash the object is either complete or absent.
    """

    #: A URL-like description for messages ("local:/path", "memory:").
    location: str

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        """Store an object atomically; ``AlreadyExists`` if it is there already. ``data`` may
        be a view of a buffer its caller reuses after the call (a pack): copy what is kept."""
        ...

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object (or a range of it); ``ObjectNotFound`` if absent."""
        ...

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        """Size of an object; ``ObjectNotFound`` if absent."""
        ...

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        """Every complete object of a kind (never half-written ones), in no set order."""
        ...

    def remove(self, kind: Kind, name: str) -> None:
        """Delete an object; ``ObjectNotFound`` if absent. Only prune (and locks) call this."""
        ...

    def room_to_defer(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of an initial copy may be stored uncompressed now, for prune to
        compress later: writes cost little here (a local disk, not a network, a bill or a
        bandwidth limit) and there is room to spare for them."""
        ...

    def close(self) -> None: ...
