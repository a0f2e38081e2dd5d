"""The wrong-token counter on its own, with a clock the test moves."""

from __future__ import annotations

import pytest

from rehost.api.errors import TooManyAttempts
from rehost.api.signin import FREE, MAX_WAIT, WINDOW, SignInGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_waits_grow_after_the_free_attempts_and_a_success_resets() -> None:
    clock = Clock()
    guard = SignInGuard(clock)
    for _ in range(FREE - 1):
        guard.check("a")
        guard.failed("a")
    guard.check("a")
    guard.failed("a")  # the FREE-th wrong token: now the address waits 2 s
    with pytest.raises(TooManyAttempts) as e:
        guard.check("a")
    assert e.value.retry_after == 2
    guard.check("b")  # another address is not affected
    clock.now += 2
    guard.check("a")
    guard.failed("a")
    with pytest.raises(TooManyAttempts) as e:
        guard.check("a")
    assert e.value.retry_after == 4
    for _ in range(20):
        guard.failed("a")
    with pytest.raises(TooManyAttempts) as e:
        guard.check("a")
    assert e.value.retry_after == MAX_WAIT
    guard.succeeded("a")
    guard.check("a")
    assert guard.failures("a") == 0


def test_old_failures_are_forgotten() -> None:
    clock = Clock()
    guard = SignInGuard(clock)
    for _ in range(FREE + 3):
        guard.failed("a")
    clock.now += WINDOW + 1
    guard.check("a")
    assert guard.failed("a") == 1
