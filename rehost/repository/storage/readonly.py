"""Read-only access as a ``Storage`` wrapper: ``check``, restore and failover only read.

Opening the repository read-only for them makes "this command cannot change the replicas"
a property of the storage object rather than a promise every code path must keep.
"""

from __future__ import annotations

from collections.abc import Iterator

from rehost.errors import UsageError
from rehost.repository.storage.base import Kind, ObjectInfo, Storage

READ_ONLY_MESSAGE = "repository is opened read-only"


class ReadOnlyStorage:
    """Wrap ``inner``; reads pass through, ``save`` and ``remove`` raise ``UsageError``."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.location = inner.location

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        raise UsageError(READ_ONLY_MESSAGE)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.load(kind, name, offset, length)

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        return self.inner.stat(kind, name)

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        return self.inner.list(kind)

    def remove(self, kind: Kind, name: str) -> None:
        raise UsageError(READ_ONLY_MESSAGE)

    def room_to_defer(self, nbytes: int) -> bool:
        return False  # nothing is written

    def close(self) -> None:
        self.inner.close()
