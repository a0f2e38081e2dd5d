"""Native sealing (rehost/repository/_sealing.c): the same blob ids as blake3-py, byte for byte,
and zstd frames python-zstandard opens. A blob stored by either path must be found by the
other: ids are the repository's addresses, and the agent and older writers use blake3-py."""

from __future__ import annotations

import random
import subprocess
from types import ModuleType

import blake3
import pytest
import zstandard

from rehost.errors import IntegrityError
from rehost.repository import crypto
from rehost.repository.crypto import NATIVE_ID_MAX, KeyMaterial, Sealer, blob_id, blob_ids
from tests.native import native_module

KiB = 1024
# every size up to two chunks and a bit (blocks of 64 bytes, a chunk of 1 KiB and their
# edges), the trees of 3..33 chunks (uneven ones have a lone right edge), short last chunks,
# the largest a native call takes and beyond
SIZES = [*range(2100), 3 * KiB, 4 * KiB - 1, 4 * KiB, 4 * KiB + 1, 5 * KiB, 7 * KiB, 8 * KiB,
         9 * KiB + 17, 31 * KiB, 33 * KiB, NATIVE_ID_MAX, NATIVE_ID_MAX + 1, (1 << 20) + 3]


def _native() -> ModuleType:
    return native_module("repository._sealing", "gcc, libzstd-dev and libssl-dev")


def _pieces(seed: int) -> list[bytes | memoryview]:
    rng = random.Random(seed)
    data = rng.randbytes(2 << 20)
    out: list[bytes | memoryview] = []
    for i, size in enumerate(SIZES):
        start = rng.randrange(64) if i % 2 else 0  # unaligned views too
        out.append(memoryview(data)[start : start + size] if i % 3 else data[start : start + size])
    out.append(bytes(4 * KiB))  # a zero block
    return out


def test_native_ids_are_keyed_blake3_of_every_size_in_one_call() -> None:
    native = _native()
    key = random.Random(1).randbytes(32)
    pieces = _pieces(1)
    ids = native.blob_ids(key, pieces, 1 << 30)
    assert ids == [blake3.blake3(p, key=key).hexdigest() for p in pieces]
    assert ids != native.blob_ids(bytes(32), pieces, 1 << 30)  # keyed: another key, other ids


def test_native_ids_leave_pieces_over_the_limit_to_the_caller() -> None:
    native = _native()
    key = bytes(range(32))
    ids = native.blob_ids(key, [b"a" * 5000, b"b" * 10, memoryview(b"c" * 4096)], 4096)
    assert ids[0] is None
    assert ids[1:] == [blake3.blake3(p, key=key).hexdigest() for p in (b"b" * 10, b"c" * 4096)]


def test_native_ids_refuse_a_wrong_key_or_a_non_buffer() -> None:
    native = _native()
    with pytest.raises(ValueError, match="32 bytes"):
        native.blob_ids(b"short", [b"x"], 10)
    with pytest.raises(TypeError):
        native.blob_ids(bytes(32), [b"x", "not bytes"], 10)


def test_native_sealing_is_a_zstd_frame_with_its_content_size() -> None:
    native = _native()
    pieces = [*_pieces(2), b"abc" * 5000]
    frames = native.seal(crypto.ZSTD_LEVEL, pieces, None, [b""] * len(pieces))
    dctx = zstandard.ZstdDecompressor()
    for frame, piece in zip(frames, pieces, strict=True):
        assert zstandard.frame_content_size(frame) == len(piece)
        assert dctx.decompress(frame) == bytes(piece)
    assert len(frames[-1]) < 200  # it compresses


def test_native_encryption_is_what_cryptography_opens_under_its_own_aad_only() -> None:
    """nonce + AES-256-GCM + tag, as ``Sealer.seal`` writes it: opened by cryptography's
    AESGCM (``Sealer.open``), refused under another aad or key, a fresh nonce every time."""
    native = _native()
    keys = KeyMaterial.generate(encrypted=True)
    assert keys.data_key is not None
    pieces = _pieces(4)
    aads = [f"blob-{i}".encode() for i in range(len(pieces))]
    sealed = native.seal(crypto.ZSTD_LEVEL, pieces, keys.data_key, aads)
    opener = Sealer(keys)
    for blob, piece, aad in zip(sealed, pieces, aads, strict=True):
        assert opener.open(blob, aad) == bytes(piece)
    with pytest.raises(IntegrityError, match="authentication"):
        opener.open(sealed[0], aads[1])
    with pytest.raises(IntegrityError, match="authentication"):
        Sealer(KeyMaterial.generate(encrypted=True)).open(sealed[0], aads[0])
    again = native.seal(crypto.ZSTD_LEVEL, pieces[:1], keys.data_key, aads[:1])
    assert again[0][: crypto.NONCE_SIZE] != sealed[0][: crypto.NONCE_SIZE]


def test_native_sealing_refuses_a_wrong_key_or_aads() -> None:
    native = _native()
    with pytest.raises(ValueError, match="32 bytes"):
        native.seal(1, [b"x"], b"short", [b""])
    with pytest.raises(ValueError, match="one aad per piece"):
        native.seal(1, [b"x", b"y"], bytes(32), [b""])


@pytest.mark.parametrize("encrypted", [False, True])
def test_seal_many_and_blob_ids_agree_with_one_blob_at_a_time(encrypted: bool) -> None:
    """The wrappers the writer calls: whether native or not, what they give is what ``blob_id``
    and ``Sealer.seal`` give, and every sealed piece opens to its bytes under its own aad only."""
    keys = KeyMaterial.generate(encrypted=encrypted)
    sealer = Sealer(keys)
    pieces = _pieces(3)
    ids = blob_ids(keys.hash_key, pieces)
    assert ids == [blob_id(keys.hash_key, p) for p in pieces]
    sealed = sealer.seal_many(pieces, [i.encode() for i in ids])
    for blob, piece, bid in zip(sealed, pieces, ids, strict=True):
        assert sealer.open(blob, bid.encode()) == bytes(piece)
    if encrypted:
        with pytest.raises(IntegrityError, match="authentication"):
            sealer.open(sealed[0], ids[1].encode())


# stored frames: every way the content size is written (1, 2, 4 bytes and their edges) and
# the raw blocks' edges (128 KiB each, the last one marked)
RAW_SIZES = [0, 1, 255, 256, 257, 4 * KiB, 65535, 65536 + 255, 65536 + 256, 128 * KiB - 1,
             128 * KiB, 128 * KiB + 1, 3 * 128 * KiB + 5, (1 << 20) + 3]


def test_raw_frames_are_zstd_frames_of_stored_blocks() -> None:
    """An initial copy's blobs: stored, not compressed, yet frames that zstd itself (its CLI,
    another decoder than the library) and python-zstandard open, with their content size;
    the native call writes what the Python path writes, byte for byte."""
    rng = random.Random(6)
    pieces = [rng.randbytes(n) if i % 2 else b"z" * n for i, n in enumerate(RAW_SIZES)]
    frames = [crypto.raw_frame(p) for p in pieces]
    dctx = zstandard.ZstdDecompressor()
    for frame, piece in zip(frames, pieces, strict=True):
        assert zstandard.frame_content_size(frame) == len(piece)
        assert dctx.decompress(frame) == piece
        blocks = max(1, -(-len(piece) // (128 * KiB)))
        assert len(frame) - len(piece) - 3 * blocks in (6, 7, 9)  # magic, descriptor, size
    cli = subprocess.run(["zstd", "-d", "-c"], input=b"".join(frames), capture_output=True, check=True)
    assert cli.stdout == b"".join(pieces)
    native = _native()
    views = [memoryview(b"-" + p)[1:] for p in pieces]  # unaligned views too
    assert native.seal(crypto.ZSTD_LEVEL, views, None, [b""] * len(pieces), True) == frames


@pytest.mark.parametrize("encrypted", [False, True])
def test_seal_many_stores_raw_when_asked(encrypted: bool) -> None:
    keys = KeyMaterial.generate(encrypted=encrypted)
    sealer = Sealer(keys)
    pieces: list[bytes | memoryview] = [b"abc" * 5000, bytes(4 * KiB), random.Random(7).randbytes(9000)]
    aads = [b"a", b"b", b"c"]
    raw = sealer.seal_many(pieces, aads, raw=True)
    packed = sealer.seal_many(pieces, aads)
    overhead = crypto.NONCE_SIZE + 16 if encrypted else 0
    for r, p, piece, aad in zip(raw, packed, pieces, aads, strict=True):
        assert len(r) >= len(piece) + overhead  # stored: no smaller than the piece
        assert sealer.open(r, aad) == sealer.open(p, aad) == bytes(piece)
    assert len(packed[0]) < 200 and len(packed[1]) < 100  # and compressed when not asked
    if not encrypted:  # one blob at a time, the same frames (encrypted, each has its own nonce)
        assert [sealer.seal(p, a, raw=True) for p, a in zip(pieces, aads, strict=True)] == raw
