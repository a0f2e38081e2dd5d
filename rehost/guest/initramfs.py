"""What an initramfs carries: its kernel modules, listed from the archive itself.

An initramfs is one or more cpio archives (newc, ``070701``/``070702``) laid end to end, each
plain or compressed (gzip, zstd, xz, lzma, bzip2); initramfs-tools puts an uncompressed
early-microcode archive in front of the compressed main one. Nothing here runs a tool of the
guest: the bytes are parsed in Python, so an initramfs from any distribution can be listed on
any host.
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import zlib
from dataclasses import dataclass

_MODULE_RE = re.compile(r"(?:^|/)([^/]+)\.ko(?:\.(?:xz|gz|zst|bz2))?$")
_BUILTIN_RE = re.compile(r"^(?:usr/)?lib/modules/([^/]+)/modules\.builtin$")
_MODDIR_RE = re.compile(r"^(?:usr/)?lib/modules/([^/]+)/")
_NEWC = (b"070701", b"070702")
_HEADER = 110


class InitramfsError(Exception):
    """The archive cannot be read (unknown compression, truncated)."""


@dataclass(frozen=True)
class InitramfsListing:
    #: module names as the kernel spells them (``-`` read as ``_``), sorted
    modules: tuple[str, ...]
    #: names from a ``modules.builtin`` the initramfs carries (None: it carries none)
    builtin: tuple[str, ...] | None
    #: kernel versions of the ``lib/modules/<version>/`` folders in it
    module_versions: tuple[str, ...]
    #: the archives found, e.g. ``("plain", "zstd")`` for microcode + main
    archives: tuple[str, ...]
    files: int


def module_name(path: str) -> str | None:
    m = _MODULE_RE.search(path)
    return m.group(1).replace("-", "_") if m else None


def builtin_names(text: str) -> tuple[str, ...]:
    """Module names from a ``modules.builtin`` (one ``kernel/.../name.ko`` a line)."""
    names = {n for line in text.splitlines() if (n := module_name(line.strip()))}
    return tuple(sorted(names))


def list_initramfs(data: bytes) -> InitramfsListing:
    """List every archive in ``data``; raises InitramfsError when a part cannot be read."""
    modules: set[str] = set()
    versions: set[str] = set()
    builtin: set[str] | None = None
    archives: list[str] = []
    files = 0
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding between archives
            pos += 1
            continue
        chunk = data[pos:pos + 6]
        if chunk in _NEWC:
            end, entries = _parse_cpio(data, pos)
            archives.append("plain")
            pos = end
        else:
            kind, plain = _decompress(data[pos:])
            archives.append(kind)
            # a compressed stream runs to the end of the file and may hold archives end to end
            entries = []
            p = 0
            while p < len(plain):
                if plain[p] == 0:
                    p += 1
                    continue
                if plain[p:p + 6] not in _NEWC:
                    raise InitramfsError(f"no cpio archive inside the {kind} data at byte {p}")
                p, more = _parse_cpio(plain, p)
                entries += more
            pos = len(data)
        for name, content in entries:
            files += 1
            name = name.lstrip("./")
            if (m := module_name(name)) is not None:
                modules.add(m)
            if (v := _MODDIR_RE.match(name)) is not None:
                versions.add(v.group(1))
            if content is not None and _BUILTIN_RE.match(name):
                builtin = (builtin or set()) | set(builtin_names(content.decode(errors="replace")))
    return InitramfsListing(tuple(sorted(modules)), None if builtin is None else tuple(sorted(builtin)),
                            tuple(sorted(versions)), tuple(archives), files)


def _parse_cpio(data: bytes, pos: int) -> tuple[int, list[tuple[str, bytes | None]]]:
    """The entries of one newc archive from ``pos`` to its TRAILER!!!; returns the end offset.
    Only ``modules.builtin`` files keep their content (the rest are not needed)."""
    entries: list[tuple[str, bytes | None]] = []
    while True:
        head = data[pos:pos + _HEADER]
        if len(head) < _HEADER or head[:6] not in _NEWC:
            raise InitramfsError(f"bad cpio header at byte {pos}")
        try:
            filesize = int(head[54:62], 16)
            namesize = int(head[94:102], 16)
        except ValueError as e:
            raise InitramfsError(f"bad cpio header at byte {pos}") from e
        name_start = pos + _HEADER
        name = data[name_start:name_start + namesize - 1].decode(errors="replace")
        body = (name_start + namesize + 3) & ~3
        end = (body + filesize + 3) & ~3
        if body + filesize > len(data):
            raise InitramfsError(f"cpio entry {name!r} runs past the end of the data")
        if name == "TRAILER!!!":
            return end, entries
        keep = data[body:body + filesize] if name.endswith("modules.builtin") else None
        entries.append((name, keep))
        pos = end


def _decompress(data: bytes) -> tuple[str, bytes]:
    try:
        if data[:2] == b"\x1f\x8b":
            return "gzip", _gunzip(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
            return "zstd", reader.read()
        if data[:6] == b"\xfd7zXZ\x00":
            return "xz", _multi_lzma(data, lzma.FORMAT_XZ)
        if data[:3] == b"\x5d\x00\x00":
            return "lzma", _multi_lzma(data, lzma.FORMAT_ALONE)
        if data[:3] == b"BZh":
            return "bzip2", bz2.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise InitramfsError(f"cannot decompress: {e}") from e
    if data[:4] == b"\x02\x21\x4c\x18" or data[:4] == b"\x04\x22\x4d\x18":
        raise InitramfsError("lz4-compressed initramfs: not supported")
    raise InitramfsError(f"unknown data (starts with {data[:8].hex()})")


def _gunzip(data: bytes) -> bytes:
    """Gzip members end to end; trailing zero padding (common after the last one) is ignored."""
    out = []
    while data and data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(31)
        out.append(d.decompress(data))
        data = d.unused_data.lstrip(b"\x00")
    return b"".join(out)


def _multi_lzma(data: bytes, fmt: int) -> bytes:
    out = []
    while data:
        d = lzma.LZMADecompressor(format=fmt)
        out.append(d.decompress(data))
        data = d.unused_data.lstrip(b"\x00")
    return b"".join(out)
