"""The ``Storage`` contract, run against every backend and wrapper in ``conftest.BACKENDS``.

Modelled on restic's backend test suite: one set of behaviours, no backend-specific ifs.
The corner cases (names, ranges) are defined in ``rehost.repository.storage.contract``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

import pytest

from rehost.errors import (
    AlreadyExists,
    BackendError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    UsageError,
)
from rehost.repository.storage import Kind, ObjectInfo, Storage

MiB = 1 << 20
PACK_ID = hashlib.sha256(b"pack").hexdigest()
BAD_NAMES = ["", ".hidden", ".", "..", "a/b", "../x", "Upper", "a b", "x\x00", "é", "a" * 256]


def name_for(kind: Kind, tag: str) -> str:
    return "config" if kind is Kind.CONFIG else hashlib.sha256(tag.encode()).hexdigest()


def run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_is_a_storage(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.location


@pytest.mark.parametrize("size", [0, 1, 4096 + 7, 20 * MiB], ids=["empty", "1B", "4KiB+7", "20MiB"])
def test_round_trip(storage: Storage, size: int) -> None:
    data = os.urandom(size)
    storage.save(Kind.DATA, PACK_ID, data)
    assert storage.load(Kind.DATA, PACK_ID) == data
    assert storage.stat(Kind.DATA, PACK_ID) == ObjectInfo(Kind.DATA, PACK_ID, size)


@pytest.mark.parametrize("kind", list(Kind))
def test_round_trip_every_kind(storage: Storage, kind: Kind) -> None:
    name = name_for(kind, "x")
    storage.save(kind, name, b"content of " + kind.value.encode())
    assert storage.load(kind, name) == b"content of " + kind.value.encode()


def test_save_copies_the_buffer(storage: Storage) -> None:
    """Callers reuse buffers (bytearray, memoryview) on the data path; objects must not move."""
    buf = bytearray(b"original")
    storage.save(Kind.INDEX, "idx", buf)  # type: ignore[arg-type]
    buf[:] = b"reused!!"
    assert storage.load(Kind.INDEX, "idx") == b"original"


RANGES = [(0, None), (0, 10), (100, 50), (5, 0), (10239, 1), (10240, 0), (10240, None), (7, None)]


@pytest.mark.parametrize(("offset", "length"), RANGES)
def test_ranged_load(storage: Storage, offset: int, length: int | None) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    storage.save(Kind.DATA, PACK_ID, data)
    end = None if length is None else offset + length
    assert storage.load(Kind.DATA, PACK_ID, offset, length) == data[offset:end]
    assert storage.load(Kind.DATA, PACK_ID, offset=offset, length=length) == data[offset:end]


@pytest.mark.parametrize(("offset", "length"), [(10241, None), (10239, 2), (0, 10241), (20000, 1)])
def test_range_past_the_end_is_an_integrity_error(
    storage: Storage, offset: int, length: int | None
) -> None:
    """Defined in contract.py: never a short read, the reference is wrong or the pack damaged."""
    storage.save(Kind.DATA, PACK_ID, bytes(10240))
    with pytest.raises(IntegrityError):
        storage.load(Kind.DATA, PACK_ID, offset, length)


def test_range_past_the_end_of_an_empty_object(storage: Storage) -> None:
    storage.save(Kind.INDEX, "empty", b"")
    assert storage.load(Kind.INDEX, "empty", 0, 0) == b""
    with pytest.raises(IntegrityError):
        storage.load(Kind.INDEX, "empty", 1)


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, -1), (-5, 3)])
def test_negative_range_is_a_usage_error(storage: Storage, offset: int, length: int | None) -> None:
    storage.save(Kind.DATA, PACK_ID, b"abc")
    with pytest.raises(UsageError):
        storage.load(Kind.DATA, PACK_ID, offset, length)


@pytest.mark.parametrize("kind", list(Kind))
def test_list_of_an_empty_storage(storage: Storage, kind: Kind) -> None:
    assert list(storage.list(kind)) == []


def test_list_per_kind_without_cross_kind_leaks(storage: Storage) -> None:
    shared = hashlib.sha256(b"same name in two kinds").hexdigest()
    expected: dict[Kind, set[ObjectInfo]] = {kind: set() for kind in Kind}
    names = {
        Kind.CONFIG: ["config"],
        Kind.KEYS: ["a", "k1"],
        Kind.DATA: [PACK_ID, shared, "a_b-c.d", "0"],
        Kind.INDEX: [shared, name_for(Kind.INDEX, "i")],
        Kind.POINTS: [name_for(Kind.POINTS, "p")],
        Kind.LOCKS: ["lock-1.exclusive"],
    }
    for kind, kind_names in names.items():
        for i, name in enumerate(kind_names):
            data = os.urandom(i * 10 + len(kind.value))
            storage.save(kind, name, data)
            expected[kind].add(ObjectInfo(kind, name, len(data)))
    for kind in Kind:
        listed = list(storage.list(kind))
        assert len(listed) == len(expected[kind]), kind
        assert set(listed) == expected[kind], kind


def test_stat(storage: Storage) -> None:
    storage.save(Kind.POINTS, "p1", b"12345")
    info = storage.stat(Kind.POINTS, "p1")
    assert info == ObjectInfo(Kind.POINTS, "p1", 5)


def test_double_save_raises_and_keeps_the_first_content(storage: Storage) -> None:
    storage.save(Kind.LOCKS, "lock", b"first")
    with pytest.raises(AlreadyExists):
        storage.save(Kind.LOCKS, "lock", b"second, longer")
    assert storage.load(Kind.LOCKS, "lock") == b"first"
    assert [i.name for i in storage.list(Kind.LOCKS)] == ["lock"]


@pytest.mark.parametrize("op", ["load", "stat", "remove"])
def test_missing_object(storage: Storage, op: str) -> None:
    storage.save(Kind.DATA, PACK_ID, b"x")  # same name, other kind: must not be found
    with pytest.raises(ObjectNotFound) as e:
        getattr(storage, op)(Kind.INDEX, PACK_ID)
    assert isinstance(e.value, NotFound) and isinstance(e.value, BackendError)
    assert not e.value.retryable


def test_remove(storage: Storage) -> None:
    storage.save(Kind.LOCKS, "l1", b"1")
    storage.save(Kind.LOCKS, "l2", b"2")
    storage.remove(Kind.LOCKS, "l1")
    assert [i.name for i in storage.list(Kind.LOCKS)] == ["l2"]
    with pytest.raises(ObjectNotFound):
        storage.load(Kind.LOCKS, "l1")
    with pytest.raises(ObjectNotFound):
        storage.remove(Kind.LOCKS, "l1")
    storage.save(Kind.LOCKS, "l1", b"again")  # locks come and go
    assert storage.load(Kind.LOCKS, "l1") == b"again"


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_are_refused(storage: Storage, name: str) -> None:
    with pytest.raises(UsageError):
        storage.save(Kind.DATA, name, b"x")
    for op in (storage.load, storage.stat, storage.remove):
        with pytest.raises(UsageError):
            op(Kind.DATA, name)
    assert list(storage.list(Kind.DATA)) == []


def test_config_must_be_named_config(storage: Storage) -> None:
    with pytest.raises(UsageError):
        storage.save(Kind.CONFIG, "other", b"{}")
    storage.save(Kind.CONFIG, "config", b"{}")
    assert [i.name for i in storage.list(Kind.CONFIG)] == ["config"]


def test_concurrent_saves_of_distinct_objects(storage: Storage) -> None:
    per_thread = 16

    def save_some(t: int) -> None:
        for i in range(per_thread):
            name = name_for(Kind.DATA, f"{t}-{i}")
            storage.save(Kind.DATA, name, f"{t}-{i}".encode() * 100)

    run_threads(8, save_some)
    listed = {i.name: i.size for i in storage.list(Kind.DATA)}
    assert len(listed) == 8 * per_thread
    for t in range(8):
        for i in range(per_thread):
            data = f"{t}-{i}".encode() * 100
            assert storage.load(Kind.DATA, name_for(Kind.DATA, f"{t}-{i}")) == data


def test_concurrent_saves_of_one_name_store_exactly_one(storage: Storage) -> None:
    winners: list[int] = []
    lock = threading.Lock()

    def race(t: int) -> None:
        try:
            storage.save(Kind.LOCKS, "exclusive", b"writer %d" % t)
        except AlreadyExists:
            return
        with lock:
            winners.append(t)

    run_threads(8, race)
    assert len(winners) == 1
    assert storage.load(Kind.LOCKS, "exclusive") == b"writer %d" % winners[0]
