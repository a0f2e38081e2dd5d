"""The wrappers' own behaviour: faults inject as configured, retry recovers and gives up,
throttling really limits, read-only refuses writes. Each wraps a real MemoryStorage."""

from __future__ import annotations

import time

import pytest

from rehost.errors import AlreadyExists, BackendError, IntegrityError, ObjectNotFound, UsageError
from rehost.repository.storage import (
    FaultyStorage,
    Kind,
    MemoryStorage,
    ObjectInfo,
    ReadOnlyStorage,
    RetryingStorage,
    ThrottledStorage,
)
from rehost.repository.storage.faults import random_failures
from rehost.repository.storage.throttle import TokenBucket

MiB = 1 << 20


class Sleeps:
    """Records the delays instead of sleeping, so retry tests take no time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# -- FaultyStorage --------------------------------------------------------------------------


def test_fail_save_after_n() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, fail_save_after=2)
    faulty.save(Kind.DATA, "p1", b"1")
    faulty.save(Kind.DATA, "p2", b"2")
    for name in ("p3", "p4"):
        with pytest.raises(BackendError, match=f"injected fault: save data/{name}") as e:
            faulty.save(Kind.DATA, name, b"x")
        assert e.value.retryable
    assert sorted(i.name for i in inner.list(Kind.DATA)) == ["p1", "p2"]
    assert faulty.injected == 2 and faulty.calls["save"] == 4


def test_store_before_failing_stores_then_raises() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, fail_save_after=0, store_before_failing=True)
    with pytest.raises(BackendError):
        faulty.save(Kind.POINTS, "p", b"stored anyway")
    assert inner.load(Kind.POINTS, "p") == b"stored anyway"


def test_fail_load_matching_a_predicate() -> None:
    inner = MemoryStorage()
    inner.save(Kind.DATA, "bad", b"b")
    inner.save(Kind.DATA, "good", b"g")
    faulty = FaultyStorage(inner, fail_load=lambda kind, name: name == "bad")
    assert faulty.load(Kind.DATA, "good") == b"g"
    with pytest.raises(BackendError, match="load data/bad"):
        faulty.load(Kind.DATA, "bad")
    assert faulty.stat(Kind.DATA, "bad").size == 1  # only loads fail


def test_corrupt_load_flips_one_byte() -> None:
    inner = MemoryStorage()
    data = bytes(range(200))
    inner.save(Kind.DATA, "p", data)
    inner.save(Kind.DATA, "empty", b"")
    faulty = FaultyStorage(inner, corrupt_load=lambda kind, name: kind is Kind.DATA)
    for offset, length in ((0, None), (50, 20)):
        got = faulty.load(Kind.DATA, "p", offset, length)
        want = data[offset : None if length is None else offset + length]
        assert len(got) == len(want)
        assert sum(a != b for a, b in zip(got, want, strict=True)) == 1
    assert faulty.load(Kind.DATA, "empty") == b""
    assert faulty.corrupted == 2
    assert inner.load(Kind.DATA, "p") == data  # the stored object is intact


def test_failures_budget_makes_a_transient_fault() -> None:
    faulty = FaultyStorage(MemoryStorage(), fail_when=lambda op, kind, name: True, failures=2)
    for _ in range(2):
        with pytest.raises(BackendError):
            faulty.stat(Kind.KEYS, "k")
    with pytest.raises(ObjectNotFound):  # healed: the inner storage answers
        faulty.stat(Kind.KEYS, "k")


@pytest.mark.parametrize("op", ["stat", "list", "remove"])
def test_fail_when_selects_any_operation(op: str) -> None:
    inner = MemoryStorage()
    inner.save(Kind.LOCKS, "l", b"")
    seen: list[tuple[str, Kind, str]] = []

    def select(o: str, kind: Kind, name: str) -> bool:
        seen.append((o, kind, name))
        return o == op

    faulty = FaultyStorage(inner, fail_when=select, retryable=False)
    with pytest.raises(BackendError) as e:
        if op == "list":
            faulty.list(Kind.LOCKS)
        else:
            getattr(faulty, op)(Kind.LOCKS, "l")
    assert not e.value.retryable
    assert seen == [(op, Kind.LOCKS, "" if op == "list" else "l")]
    assert inner.stat(Kind.LOCKS, "l").size == 0


def test_flaky_stack_used_by_the_conformance_suite_really_fails() -> None:
    faulty = FaultyStorage(MemoryStorage(), fail_when=random_failures(0.3, seed=7))
    storage = RetryingStorage(faulty, attempts=20, base_delay=0.0)
    for i in range(50):
        storage.save(Kind.INDEX, f"i{i}", b"x")
    assert len(list(storage.list(Kind.INDEX))) == 50
    assert faulty.injected > 5


# -- RetryingStorage ------------------------------------------------------------------------


def test_retry_recovers_from_transient_faults() -> None:
    inner = MemoryStorage()
    inner.save(Kind.DATA, "p", b"pack")
    faulty = FaultyStorage(inner, fail_load=lambda kind, name: True, failures=3)
    sleeps = Sleeps()
    storage = RetryingStorage(faulty, attempts=5, sleep=sleeps)
    assert storage.load(Kind.DATA, "p", 1, 2) == b"ac"
    assert faulty.calls["load"] == 4
    assert len(sleeps.delays) == 3


def test_retry_gives_up_after_n_attempts() -> None:
    faulty = FaultyStorage(MemoryStorage(), fail_save_after=0)
    sleeps = Sleeps()
    storage = RetryingStorage(faulty, attempts=4, sleep=sleeps)
    with pytest.raises(BackendError, match="gave up after 4 attempts") as e:
        storage.save(Kind.DATA, "p", b"x")
    assert e.value.retryable  # a later run may still succeed
    assert isinstance(e.value.__cause__, BackendError)
    assert faulty.calls["save"] == 4 and len(sleeps.delays) == 3


def test_retry_leaves_non_retryable_errors_alone() -> None:
    faulty = FaultyStorage(MemoryStorage(), fail_save_after=0, retryable=False)
    storage = RetryingStorage(faulty, sleep=Sleeps())
    with pytest.raises(BackendError, match="injected fault"):
        storage.save(Kind.DATA, "p", b"x")
    assert faulty.calls["save"] == 1


def test_retry_leaves_answers_alone() -> None:
    faulty = FaultyStorage(MemoryStorage())
    storage = RetryingStorage(faulty, sleep=Sleeps())
    with pytest.raises(ObjectNotFound):
        storage.load(Kind.DATA, "missing")
    storage.save(Kind.DATA, "p", b"x")
    with pytest.raises(AlreadyExists):
        storage.save(Kind.DATA, "p", b"x")  # no earlier try failed: a plain double save
    with pytest.raises(IntegrityError):
        storage.load(Kind.DATA, "p", 5)
    assert faulty.calls["load"] == 2 and faulty.calls["save"] == 2


def test_retry_of_a_save_whose_reply_was_lost_succeeds() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, fail_save_after=0, failures=1, store_before_failing=True)
    storage = RetryingStorage(faulty, sleep=Sleeps())
    storage.save(Kind.POINTS, "p", b"manifest")
    assert inner.load(Kind.POINTS, "p") == b"manifest"
    assert faulty.calls["save"] == 2


def test_retry_of_a_save_meeting_other_content_raises_already_exists() -> None:
    inner = MemoryStorage()
    inner.save(Kind.LOCKS, "l", b"someone else's lock")
    faulty = FaultyStorage(inner, fail_save_after=0, failures=1)
    storage = RetryingStorage(faulty, sleep=Sleeps())
    with pytest.raises(AlreadyExists):
        storage.save(Kind.LOCKS, "l", b"my lock")
    assert inner.load(Kind.LOCKS, "l") == b"someone else's lock"


def test_retry_of_a_save_meeting_identical_content_succeeds() -> None:
    """Documented in retry.py: indistinguishable from a lost reply, harmless by design."""
    inner = MemoryStorage()
    inner.save(Kind.DATA, "p", b"same bytes")
    faulty = FaultyStorage(inner, fail_save_after=0, failures=1)
    RetryingStorage(faulty, sleep=Sleeps()).save(Kind.DATA, "p", b"same bytes")


def test_retry_list_is_complete_after_a_failure() -> None:
    inner = MemoryStorage()
    for i in range(5):
        inner.save(Kind.INDEX, f"i{i}", b"x")
    faulty = FaultyStorage(inner, fail_when=lambda op, kind, name: op == "list", failures=2)
    storage = RetryingStorage(faulty, sleep=Sleeps())
    assert sorted(i.name for i in storage.list(Kind.INDEX)) == [f"i{i}" for i in range(5)]


def test_retry_backoff_is_exponential_capped_and_jittered() -> None:
    low = RetryingStorage(MemoryStorage(), base_delay=0.1, max_delay=1.0, jitter=lambda: 0.0)
    high = RetryingStorage(MemoryStorage(), base_delay=0.1, max_delay=1.0, jitter=lambda: 0.999)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert low.delay(attempt) == pytest.approx(ceiling / 2)
        assert ceiling / 2 < high.delay(attempt) < ceiling


@pytest.mark.parametrize("settings", [{"attempts": 0}, {"base_delay": -1.0}])
def test_retry_refuses_bad_settings(settings: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        RetryingStorage(MemoryStorage(), **settings)  # type: ignore[arg-type]


# -- ThrottledStorage -----------------------------------------------------------------------


def test_throttle_limits_real_transfers() -> None:
    """2 MiB (1 MiB up, 1 MiB down) at 4 MiB/s must take about half a second."""
    storage = ThrottledStorage(MemoryStorage(), 4 * MiB)
    start = time.monotonic()
    storage.save(Kind.DATA, "p", bytes(MiB))
    assert len(storage.load(Kind.DATA, "p")) == MiB
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 1.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_math() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    assert bucket.take(100) == 0.0  # the initial burst is free
    assert bucket.take(500) == pytest.approx(0.5)  # then the rate applies
    clock.now += 60  # a long idle refills only up to the burst
    assert bucket.take(100) == 0.0
    assert bucket.take(1) == pytest.approx(0.001)


def test_throttle_counts_loads_after_reading_and_leaves_metadata_free() -> None:
    clock = FakeClock()
    inner = MemoryStorage()
    inner.save(Kind.DATA, "p", bytes(2000))
    storage = ThrottledStorage(inner, 1000, burst=0, clock=clock, sleep=clock.sleep)
    assert len(storage.load(Kind.DATA, "p", 0, 500)) == 500
    assert clock.now == pytest.approx(100.5)
    storage.stat(Kind.DATA, "p")
    list(storage.list(Kind.DATA))
    storage.remove(Kind.DATA, "p")
    assert clock.now == pytest.approx(100.5)


def test_throttle_refuses_a_non_positive_rate() -> None:
    with pytest.raises(UsageError):
        ThrottledStorage(MemoryStorage(), 0)


# -- ReadOnlyStorage ------------------------------------------------------------------------


def test_read_only_refuses_writes_and_passes_reads() -> None:
    inner = MemoryStorage()
    inner.save(Kind.POINTS, "p", b"manifest")
    storage = ReadOnlyStorage(inner)
    with pytest.raises(UsageError, match="repository is opened read-only"):
        storage.save(Kind.POINTS, "q", b"x")
    with pytest.raises(UsageError, match="repository is opened read-only"):
        storage.remove(Kind.POINTS, "p")
    assert storage.load(Kind.POINTS, "p", 2, 3) == b"nif"
    assert storage.stat(Kind.POINTS, "p") == ObjectInfo(Kind.POINTS, "p", 8)
    assert list(storage.list(Kind.POINTS)) == [ObjectInfo(Kind.POINTS, "p", 8)]
    assert [i.name for i in inner.list(Kind.POINTS)] == ["p"]
    assert storage.location == inner.location
