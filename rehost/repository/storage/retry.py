"""Retries as a ``Storage`` wrapper (kopia's ``retrying`` blob storage), not inside backends.

Only errors that say a retry can help (``BackendError(retryable=True)``) are retried, with
exponential backoff and jitter so many workers hitting one struggling server do not retry in
lockstep. ``ObjectNotFound``, ``AlreadyExists``, integrity and usage errors are answers, not
failures, and pass through at once.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from rehost.errors import AlreadyExists, BackendError, ObjectNotFound, UsageError
from rehost.repository.storage.base import Kind, ObjectInfo, Storage
from rehost.repository.storage.contract import describe

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingStorage:
    """Wrap ``inner`` and retry transient failures up to ``attempts`` tries in all.

    The delay before try ``n + 1`` is ``min(max_delay, base_delay * 2**(n - 1))``, scaled by a
    random factor in [0.5, 1) ("equal jitter": spread out, but never a busy loop).

    A save whose earlier try failed may still have stored the object (the reply was lost).
    When the retry then meets ``AlreadyExists`` and the stored object has the very same
    bytes, the save succeeded. The wrapper cannot tell "my lost try stored it" from "someone
    stored identical bytes before", so with retries a save of identical content may succeed
    where the bare backend would raise ``AlreadyExists``; for content-addressed objects that
    is harmless, and different content still raises.

    ``list`` is read completely inside the retry, so a failure halfway never yields an object
    twice; the cost is holding one kind's listing in memory.
    """

    def __init__(
        self,
        inner: Storage,
        attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if attempts < 1 or base_delay < 0 or max_delay < 0:
            raise UsageError(
                f"invalid retry settings: attempts={attempts} (at least 1), "
                f"base_delay={base_delay}, max_delay={max_delay} (not negative)"
            )
        self.inner = inner
        self.location = inner.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._jitter = jitter

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        tried = False

        def save_once() -> None:
            nonlocal tried
            try:
                self.inner.save(kind, name, data)
            except AlreadyExists:
                if tried and self._holds(kind, name, data):
                    log.info("%s was stored by an earlier try of this save", describe(kind, name))
                    return
                raise
            finally:
                tried = True

        self._call(f"save {describe(kind, name)}", save_once)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(
            f"load {describe(kind, name)}", lambda: self.inner.load(kind, name, offset, length)
        )

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        return self._call(f"stat {describe(kind, name)}", lambda: self.inner.stat(kind, name))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        infos = self._call(
            f"list {kind.value}/", lambda: builtins.list(self.inner.list(kind))
        )
        return iter(infos)

    def remove(self, kind: Kind, name: str) -> None:
        self._call(f"remove {describe(kind, name)}", lambda: self.inner.remove(kind, name))

    def room_to_defer(self, nbytes: int) -> bool:
        return self.inner.room_to_defer(nbytes)

    def close(self) -> None:
        self.inner.close()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + self._jitter() / 2)

    def _holds(self, kind: Kind, name: str, data: bytes | memoryview) -> bool:
        """True if the stored object has exactly ``data`` (size first: it is cheaper)."""
        if self.stat(kind, name).size != len(data):
            return False
        return self.load(kind, name) == data

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except BackendError as e:
                if not e.retryable or isinstance(e, ObjectNotFound):
                    raise
                if attempt == self.attempts:
                    raise BackendError(
                        f"{what} in {self.location}: gave up after {attempt} attempts: {e}",
                        retryable=True,
                    ) from e
                delay = self.delay(attempt)
                log.warning("%s failed (%s), try %d of %d in %.2fs",
                            what, e, attempt + 1, self.attempts, delay)
                self._sleep(delay)
        raise AssertionError("unreachable: attempts >= 1")
