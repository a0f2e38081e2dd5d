"""Block digests: the native build and the Python one give the same bytes (a cycle's digests
are compared with the agent's and with cached ones made by either)."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
import xxhash

from rehost.replication import digests
from rehost.repository.repository import BLOCK_SIZE
from tests.native import native_module

SIZES = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537, (1 << 20) - 5, 1 << 20, 3 * (1 << 20) + 123]


def _one_by_one(data: bytes) -> bytes:
    """The definition, spelled out: canonical XXH3-64 of each 4 KiB block, the last short."""
    return b"".join(xxhash.xxh3_64_digest(data[i : i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE))


def _native() -> ModuleType:
    return native_module("replication._blockhash", "gcc and libxxhash-dev")


@pytest.mark.parametrize("size", SIZES)
def test_python_digests_are_xxh3_of_each_block(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert digests.digest_blocks_py(data) == _one_by_one(data)


@pytest.mark.parametrize("size", SIZES)
def test_native_digests_equal_the_python_ones_for_every_buffer_kind(size: int) -> None:
    native = _native()
    data = random.Random(size).randbytes(size)
    want = _one_by_one(data)
    for buf in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))[: len(data)]):
        assert native.digest_blocks(buf) == want
        assert native.digest_blocks_portable(buf) == want


def test_the_cycle_uses_the_native_digests_where_built() -> None:
    native = _native()
    assert digests.digest_blocks is native.digest_blocks
    assert digests.NATIVE_VARIANT == native.VARIANT
    assert native.VARIANT in ("avx2", "default")


def test_a_zero_block_has_the_zero_digest_and_a_view_of_a_bigger_buffer_only_its_own() -> None:
    native = _native()
    big = bytearray(random.Random(7).randbytes(5 * BLOCK_SIZE))
    big[BLOCK_SIZE : 2 * BLOCK_SIZE] = bytes(BLOCK_SIZE)
    view = memoryview(big)[BLOCK_SIZE : 3 * BLOCK_SIZE + 10]
    got = native.digest_blocks(view)
    assert got[:8] == digests.ZERO_DIGEST
    assert got == _one_by_one(bytes(view))


def test_a_buffer_that_is_not_contiguous_is_refused() -> None:
    native = _native()
    with pytest.raises((BufferError, TypeError, ValueError)):
        native.digest_blocks(memoryview(bytes(8192))[::2])
    with pytest.raises(TypeError):
        native.digest_blocks("text")
