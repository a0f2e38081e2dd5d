"""An in-memory ``Storage``: real code with the full contract, for tests and dry runs.

It is the reference the conformance suite runs against next to the local backend, and the
inner storage of the wrappers' tests, so it must keep every rule of the contract (names,
ranges, write-once) rather than be a lenient dict.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator

from rehost.errors import AlreadyExists, ObjectNotFound, UsageError
from rehost.repository.storage.base import Kind, ObjectInfo
from rehost.repository.storage.contract import check_name, describe, range_bounds


class MemoryStorage:
    """Objects in a dict guarded by a lock, so several threads can share one instance."""

    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self._objects: dict[tuple[Kind, str], bytes] = {}
        self._lock = threading.Lock()

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        check_name(kind, name)
        # Copy: the caller may reuse a bytearray/memoryview buffer after we return.
        stored = bytes(data)
        with self._lock:
            if (kind, name) in self._objects:
                raise AlreadyExists(f"{describe(kind, name)} already exists in {self.location}")
            self._objects[kind, name] = stored

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._get(kind, name)
        start, end = range_bounds(len(data), offset, length, kind=kind, name=name)
        return data if (start, end) == (0, len(data)) else data[start:end]

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        return ObjectInfo(kind, name, len(self._get(kind, name)))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        # A snapshot taken under the lock: callers may save or remove while iterating.
        with self._lock:
            infos: builtins.list[ObjectInfo] = [
                ObjectInfo(k, name, len(data)) for (k, name), data in self._objects.items()
                if k is kind
            ]
        return iter(infos)

    def remove(self, kind: Kind, name: str) -> None:
        check_name(kind, name)
        with self._lock:
            if self._objects.pop((kind, name), None) is None:
                raise self._not_found(kind, name)

    def room_to_defer(self, nbytes: int) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; the data stays so a named shared storage can be reopened."""

    def _get(self, kind: Kind, name: str) -> bytes:
        check_name(kind, name)
        with self._lock:
            data = self._objects.get((kind, name))
        if data is None:
            raise self._not_found(kind, name)
        return data

    def _not_found(self, kind: Kind, name: str) -> ObjectNotFound:
        return ObjectNotFound(f"{describe(kind, name)} not found in {self.location}")


_shared: dict[str, MemoryStorage] = {}
_shared_lock = threading.Lock()


def shared_memory_storage(name: str) -> MemoryStorage:
    """The process-wide ``MemoryStorage`` called ``name``, created on first use.

    Lets two ``open_storage("memory:NAME")`` calls (say, a writer job and a checker) see the
    same objects, as two opens of one local path would.
    """
    if not name:
        raise UsageError("a shared memory storage needs a name: memory:NAME")
    with _shared_lock:
        storage = _shared.get(name)
        if storage is None:
            storage = _shared[name] = MemoryStorage(f"memory:{name}")
        return storage


def forget_shared_memory_storage(name: str) -> None:
    """Drop a named shared storage and its data (tests use it to start clean)."""
    with _shared_lock:
        _shared.pop(name, None)
