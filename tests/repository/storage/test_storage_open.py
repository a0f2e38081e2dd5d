"""open_storage: URLs and options to backends and wrappers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from rehost.errors import NotFound, UsageError
from rehost.repository.storage import (
    Kind,
    LocalStorage,
    MemoryStorage,
    ReadOnlyStorage,
    ThrottledStorage,
    open_storage,
)
from rehost.repository.storage.memory import forget_shared_memory_storage


def test_local_url_and_plain_path(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    created = open_storage(f"local:{root}", create=True)
    assert isinstance(created, LocalStorage)
    created.save(Kind.INDEX, "i", b"index")
    reopened = open_storage(str(root))
    assert isinstance(reopened, LocalStorage)
    assert reopened.load(Kind.INDEX, "i") == b"index"


def test_local_path_with_a_colon(tmp_path: Path) -> None:
    root = tmp_path / "a:b"
    assert isinstance(open_storage(f"local:{root}", create=True), LocalStorage)
    with pytest.raises(UsageError, match="local:PATH"):
        open_storage("a:b/c")


def test_local_without_create_needs_a_repository(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        open_storage(str(tmp_path / "missing"))
    with pytest.raises(UsageError):
        open_storage("local:")


def test_memory_is_fresh_each_time() -> None:
    a = open_storage("memory:")
    a.save(Kind.KEYS, "k", b"key")
    b = open_storage("memory:")
    assert isinstance(b, MemoryStorage)
    assert list(b.list(Kind.KEYS)) == []


def test_named_memory_is_shared() -> None:
    name = f"test-{uuid.uuid4().hex}"
    try:
        open_storage(f"memory:{name}").save(Kind.KEYS, "k", b"key")
        again = open_storage(f"memory:{name}")
        assert again.load(Kind.KEYS, "k") == b"key"
        assert again.location == f"memory:{name}"
    finally:
        forget_shared_memory_storage(name)
    assert list(open_storage(f"memory:{name}").list(Kind.KEYS)) == []
    forget_shared_memory_storage(name)


def test_unknown_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown storage scheme 'ftp'.*local:, memory:"):
        open_storage("ftp://example.com/repo")


def test_unknown_option_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown option.*crate.*supported: bytes_per_second"):
        open_storage(str(tmp_path / "repo"), crate=True)
    assert not (tmp_path / "repo").exists()
    with pytest.raises(UsageError, match="create"):
        open_storage("memory:", create=True)


def test_wrapper_options() -> None:
    storage = open_storage("memory:", bytes_per_second=1 << 30, read_only=True)
    assert isinstance(storage, ReadOnlyStorage)
    assert isinstance(storage.inner, ThrottledStorage)
    assert isinstance(storage.inner.inner, MemoryStorage)
    with pytest.raises(UsageError, match="read-only"):
        storage.save(Kind.DATA, "p", b"x")
