"""Keys, sealing and blob ids (docs/design.md §2: keys, sealing, blobs).

Every payload goes through ``Sealer`` so compression and encryption are decided in one
place; the rest of the repository handles opaque sealed bytes.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import zstandard

from rehost.errors import IntegrityError, WrongPassword

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# cryptography is imported where a key is used: a plain repository's commands (every
# `rehost replicate` of one) do not pay its import, 15-30 ms.

NONCE_SIZE = 12
# level 1: 404 MiB/s at ratio 0.44 on /usr/lib vs 241 MiB/s at 0.40 for level 3 (one core here);
# compression runs on every changed byte, so speed wins.
ZSTD_LEVEL = 1
# scrypt cost: ~0.1 s and 32 MiB per unlock; enough against offline guessing of the key file.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The repository's secrets: ``data_key`` encrypts (None = unencrypted), ``hash_key`` ids."""

    hash_key: bytes
    data_key: bytes | None = None

    @classmethod
    def generate(cls, *, encrypted: bool) -> KeyMaterial:
        return cls(
            hash_key=secrets.token_bytes(32),
            data_key=secrets.token_bytes(32) if encrypted else None,
        )


def blob_id(hash_key: bytes, data: bytes | memoryview) -> str:
    """Content address of a blob: keyed BLAKE3, so ids leak nothing about known content."""
    return blake3.blake3(data, key=hash_key).hexdigest()  # type: ignore[no-any-return]


_Pieces = Sequence[bytes | memoryview]
_Ids = Callable[[bytes, _Pieces, int], list[str | None]]
_Seal = Callable[[int, _Pieces, bytes | None, Sequence[bytes], bool], list[bytes]]


def _native() -> tuple[_Ids, _Seal] | None:
    """Ids and compression of many blobs per call without the GIL (setup.py), if built."""
    try:
        from rehost.repository import _sealing
    except ImportError:  # no C compiler, libzstd-dev or libssl-dev where rehost was installed
        return None
    return _sealing.blob_ids, _sealing.seal


_SEALING = _native()
#: whether ``blob_ids`` and ``Sealer.seal_many`` run natively (else one Python call per blob)
NATIVE_SEALING = _SEALING is not None
#: the largest blob the native ids take: blake3-py hashes larger ones faster (its SIMD code
#: goes further), and one such blob is one GIL release however it is hashed
NATIVE_ID_MAX = 64 * 1024


def blob_ids(hash_key: bytes, pieces: Sequence[bytes | memoryview]) -> list[str]:
    """``blob_id`` of each piece; natively in one call for the small ones (a delta's runs)."""
    if _SEALING is None:
        return [blob_id(hash_key, p) for p in pieces]
    ids = _SEALING[0](hash_key, pieces, NATIVE_ID_MAX)
    return [bid if bid is not None else blob_id(hash_key, p) for bid, p in zip(ids, pieces, strict=True)]


_RAW_BLOCK_MAX = 128 * 1024  # Block_Maximum_Size (RFC 8878 3.1.1.2.4)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def raw_frame(data: bytes | memoryview) -> bytes:
    """A zstd frame that stores ``data`` in raw blocks, as the native ``seal(raw=True)`` writes
    it: any zstd decoder reads it, and making it costs a copy. An initial copy stores its blobs
    so and has them compressed later (``prune``), where compressing inline would bound it."""
    n = len(data)
    size_bytes = 1 if n < 256 else 2 if n < 65536 + 256 else 4 if n <= 0xFFFFFFFF else 8
    value = n - 256 if size_bytes == 2 else n
    flag = {1: 0, 2: 1, 4: 2, 8: 3}[size_bytes]
    header = bytes([flag << 6 | 1 << 5]) + value.to_bytes(size_bytes, "little")  # Single_Segment
    parts: list[bytes | memoryview] = [_ZSTD_MAGIC, header]
    view = memoryview(data)
    start = 0
    while True:
        block = view[start : start + _RAW_BLOCK_MAX]
        start += len(block)
        parts += [(len(block) << 3 | (start >= n)).to_bytes(3, "little"), block]
        if start >= n:
            return b"".join(parts)


class Sealer:
    """zstd compression, then AES-256-GCM when the repository is encrypted.

    Each thread needs its own zstd contexts, so sealers are cheap and made per thread.
    ``aad`` binds a sealed payload to its role (e.g. the blob id) so a valid ciphertext
    cannot be swapped in for another one.
    """

    def __init__(self, keys: KeyMaterial) -> None:
        self.keys = keys
        self._aead = _aesgcm(keys.data_key) if keys.data_key else None
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._dctx = zstandard.ZstdDecompressor()

    def seal(self, data: bytes | memoryview, aad: bytes = b"", *, raw: bool = False) -> bytes:
        """``raw``: stored, not compressed (``raw_frame``)."""
        packed: bytes = raw_frame(data) if raw else self._cctx.compress(data)
        if self._aead is None:
            return packed
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, packed, aad)

    def seal_many(self, pieces: Sequence[bytes | memoryview], aads: Sequence[bytes], *,
                  raw: bool = False) -> list[bytes]:
        """``seal`` of each piece with its aad: in one native call where built (the same
        layout, opened by ``open``), else one by one."""
        if _SEALING is None:
            return [self.seal(p, a, raw=raw) for p, a in zip(pieces, aads, strict=True)]
        return _SEALING[1](ZSTD_LEVEL, pieces, self.keys.data_key, aads, raw)

    def open(self, sealed: bytes, aad: bytes = b"", what: str = "object") -> bytes:
        if self._aead is not None:
            if len(sealed) < NONCE_SIZE + 16:
                raise IntegrityError(f"{what} is truncated")
            try:
                sealed = self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
            except _invalid_tag():
                raise IntegrityError(f"{what} failed authentication (damaged or tampered)") from None
        try:
            return self._dctx.decompress(sealed)  # type: ignore[no-any-return]
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what} does not decompress: {e}") from None


def _kdf(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def wrap_keys(keys: KeyMaterial, password: str) -> bytes:
    """A key file: the master secrets sealed under a password-derived key."""
    assert keys.data_key is not None
    salt = os.urandom(16)
    wrapping = _aesgcm(_kdf(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    nonce = os.urandom(NONCE_SIZE)
    secret = keys.data_key + keys.hash_key
    doc = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(nonce + wrapping.encrypt(nonce, secret, b"rehost-key")).decode(),
    }
    return json.dumps(doc).encode()


def unwrap_keys(keyfile: bytes, password: str) -> KeyMaterial:
    try:
        doc = json.loads(keyfile)
        salt = base64.b64decode(doc["salt"])
        blob = base64.b64decode(doc["data"])
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"key file is damaged: {e}") from None
    wrapping = _aesgcm(_kdf(password, salt, n, r, p))
    try:
        secret = wrapping.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], b"rehost-key")
    except _invalid_tag():
        raise WrongPassword() from None
    return KeyMaterial(data_key=secret[:32], hash_key=secret[32:])
