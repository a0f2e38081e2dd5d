"""Fault injection as a ``Storage`` wrapper: how tests prove crash safety and integrity checks.

A backend that fails on purpose is real code (STYLE lesson 4): the retry wrapper, the
replication cycle's crash recovery and ``check`` are tested against it instead of mocks.
Injected errors are ``BackendError`` (retryable unless told otherwise), like a flaky network
or a full disk would raise.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Literal

from rehost.errors import BackendError
from rehost.repository.storage.base import Kind, ObjectInfo, Storage
from rehost.repository.storage.contract import describe

Op = Literal["save", "load", "stat", "list", "remove"]
#: Chooses objects: called with the kind and name of each operation.
ObjectPredicate = Callable[[Kind, str], bool]
#: Chooses operations of any type; ``list`` is called with an empty name.
OpPredicate = Callable[[Op, Kind, str], bool]


class FaultyStorage:
    """Wrap ``inner`` and make chosen operations fail or return corrupted bytes.

    - ``fail_save_after=N``: the first N saves pass, every later one fails (a backend that
      dies mid-cycle);
    - ``fail_load``: loads of the objects it selects fail;
    - ``corrupt_load``: loads of the objects it selects return the bytes with one byte
      flipped (same length, so only a hash check can tell); empty results stay empty;
    - ``fail_when``: any operation it selects fails (for stat, list, remove, or random
      flakiness);
    - ``failures=N``: inject at most N errors in total, then heal (a transient fault);
    - ``store_before_failing``: a failing save stores the object first and then raises, like
      a reply lost after the server did the work; a retry then meets ``AlreadyExists``;
    - ``retryable``: the ``retryable`` flag of the injected errors.

    ``calls`` counts operations that reached this wrapper, ``injected`` the errors raised
    and ``corrupted`` the loads tampered with, so tests can assert how often a caller tried.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        fail_save_after: int | None = None,
        fail_load: ObjectPredicate | None = None,
        corrupt_load: ObjectPredicate | None = None,
        fail_when: OpPredicate | None = None,
        failures: int | None = None,
        store_before_failing: bool = False,
        retryable: bool = True,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.fail_save_after = fail_save_after
        self.fail_load = fail_load
        self.corrupt_load = corrupt_load
        self.fail_when = fail_when
        self.failures = failures
        self.store_before_failing = store_before_failing
        self.retryable = retryable
        self.calls: Counter[Op] = Counter()
        self.injected = 0
        self.corrupted = 0
        self._lock = threading.Lock()

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        fault = self._fault("save", kind, name)
        if fault is not None and not self.store_before_failing:
            raise fault
        self.inner.save(kind, name, data)
        if fault is not None:
            raise fault

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        fault = self._fault("load", kind, name)
        if fault is not None:
            raise fault
        data = self.inner.load(kind, name, offset, length)
        if self.corrupt_load is not None and data and self.corrupt_load(kind, name):
            with self._lock:
                self.corrupted += 1
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF
            return bytes(damaged)
        return data

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        fault = self._fault("stat", kind, name)
        if fault is not None:
            raise fault
        return self.inner.stat(kind, name)

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        fault = self._fault("list", kind, "")
        if fault is not None:
            raise fault
        return self.inner.list(kind)

    def remove(self, kind: Kind, name: str) -> None:
        fault = self._fault("remove", kind, name)
        if fault is not None:
            raise fault
        self.inner.remove(kind, name)

    def room_to_defer(self, nbytes: int) -> bool:
        return self.inner.room_to_defer(nbytes)

    def close(self) -> None:
        self.inner.close()

    def _fault(self, op: Op, kind: Kind, name: str) -> BackendError | None:
        """Count the call and return the error to inject, if this one should fail."""
        with self._lock:
            self.calls[op] += 1
            selected = (
                (op == "save" and self.fail_save_after is not None
                 and self.calls["save"] > self.fail_save_after)
                or (op == "load" and self.fail_load is not None and self.fail_load(kind, name))
                or (self.fail_when is not None and self.fail_when(op, kind, name))
            )
            if not selected or (self.failures is not None and self.injected >= self.failures):
                return None
            self.injected += 1
        target = describe(kind, name) if name else f"{kind.value}/"
        return BackendError(f"injected fault: {op} {target}", retryable=self.retryable)


def random_failures(rate: float, seed: int | None = None) -> OpPredicate:
    """A ``fail_when`` predicate selecting a random ``rate`` of all operations.

    For chaos tests of whole stacks (``RetryingStorage(FaultyStorage(...))``); a ``seed``
    makes the sequence of choices reproducible.
    """
    rng = random.Random(seed)
    lock = threading.Lock()

    def select(op: Op, kind: Kind, name: str) -> bool:
        with lock:
            return rng.random() < rate

    return select
