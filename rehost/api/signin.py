"""Wrong tokens are counted per client address and slowed down (issue 19).

A token is 32 random bytes, so guessing one is hopeless; what this stops is a client that
hammers the API with stolen or stale tokens, and it makes such a client visible. After
``FREE`` wrong tokens from one address within ``WINDOW`` seconds, that address must wait
before its next attempt: 2 s, then 4, 8, ... up to ``MAX_WAIT``; an attempt before then is
answered 429 with ``Retry-After`` and not even checked. A right token resets the count.
The counts live in the server's memory: each API server of a fleet counts on its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rehost.api.errors import TooManyAttempts

FREE = 5
WINDOW = 15 * 60.0
MAX_WAIT = 60.0
#: addresses remembered at most (the oldest are forgotten first)
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0


class SignInGuard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, _Record] = {}

    def _wait(self, rec: _Record) -> float:
        return 0.0 if rec.failures < FREE else min(MAX_WAIT, 2.0 ** (rec.failures - FREE + 1))

    def check(self, address: str) -> None:
        """Refuse an attempt from an address that must still wait."""
        with self._lock:
            rec = self._seen.get(address)
            if rec is None:
                return
            now = self._clock()
            if now - rec.last > WINDOW:
                del self._seen[address]
                return
            left = rec.last + self._wait(rec) - now
        if left > 0:
            raise TooManyAttempts(f"{rec.failures} wrong tokens from {address}: wait {math.ceil(left)} s "
                                  "before the next attempt", retry_after=math.ceil(left))

    def failed(self, address: str) -> int:
        """Count a wrong token; the address's count."""
        with self._lock:
            rec = self._seen.pop(address, None) or _Record()
            now = self._clock()
            if now - rec.last > WINDOW:
                rec.failures = 0
            rec.failures += 1
            rec.last = now
            self._seen[address] = rec
            while len(self._seen) > MAX_ADDRESSES:
                del self._seen[next(iter(self._seen))]
            return rec.failures

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)

    def failures(self, address: str) -> int:
        with self._lock:
            rec = self._seen.get(address)
            return rec.failures if rec else 0
