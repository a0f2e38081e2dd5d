"""Bandwidth limits as a ``Storage`` wrapper: a replication policy's cap on repository traffic.

One token bucket counts the bytes of saves and loads together and is shared by every thread
using the wrapper, so the limit holds for the whole job however many workers it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from rehost.errors import UsageError
from rehost.repository.storage.base import Kind, ObjectInfo, Storage


class TokenBucket:
    """Allow ``rate`` bytes per second on average, with bursts of up to ``burst`` bytes.

    A request larger than the bucket is allowed and puts the bucket in debt: its caller
    waits until the debt is paid at ``rate``, and so does every caller after it. That keeps
    the long-run rate exact for objects of any size (packs are far bigger than any sane
    burst) without splitting them.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise UsageError(f"a bandwidth limit must be positive, not {rate} bytes/s")
        self.rate = float(rate)
        # Default: 50 ms worth, so a limit bites from the first transfer instead of after a
        # free second's worth of bytes.
        self.burst = self.rate * 0.05 if burst is None else float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Spend ``n`` bytes; sleep until the bucket is out of debt; return the wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class ThrottledStorage:
    """Wrap ``inner`` so saves and loads together move at most ``bytes_per_second``.

    A save waits before it sends (its size is known); a load pays after it returns, when its
    size is known, and so delays the caller and the next transfers. One object still moves
    at the backend's own speed: the limit holds on average over a job, not within an object.
    """

    def __init__(
        self,
        inner: Storage,
        bytes_per_second: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.bucket = TokenBucket(bytes_per_second, burst, clock=clock, sleep=sleep)

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        self.bucket.take(len(data))
        self.inner.save(kind, name, data)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(kind, name, offset, length)
        self.bucket.take(len(data))
        return data

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        return self.inner.stat(kind, name)

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        return self.inner.list(kind)

    def remove(self, kind: Kind, name: str) -> None:
        self.inner.remove(kind, name)

    def room_to_defer(self, nbytes: int) -> bool:
        return False  # under a bandwidth limit every byte written costs time

    def close(self) -> None:
        self.inner.close()
