"""A raw image read in place (``FileDisk``) reads what qemu-nbd serves of the same file:
qemu-nbd's ``base:allocation`` and its bytes are the oracle, on sparse files with data at
odd places, a size that is not a multiple of 4 KiB, unaligned caller buffers, and a file
system that refuses O_DIRECT."""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path

import pytest

from rehost.disks import VIA_NBD_ENV, DiskImage, FileDisk, open_disk, open_reader
from rehost.disks.extent import Extent
from rehost.disks.file_disk import aligned_buffer
from rehost.errors import DiskError

MiB = 1 << 20


def _sparse(path: Path, size: int, writes: list[tuple[int, int]], seed: int = 7) -> bytes:
    """A sparse file of ``size`` with random bytes at ``writes`` (offset, length); returns
    its whole content as the test's own record."""
    rng = random.Random(seed)
    content = bytearray(size)
    with path.open("wb") as f:
        f.truncate(size)
        for off, n in writes:
            data = rng.randbytes(n)
            f.seek(off)
            f.write(data)
            content[off : off + n] = data
    return bytes(content)


def _data(extents: list[Extent]) -> list[tuple[int, int]]:
    """Non-zero ranges, touching ones merged (servers may split where they like)."""
    out: list[tuple[int, int]] = []
    for e in extents:
        if e.zero:
            continue
        if out and out[-1][1] == e.start:
            out[-1] = (out[-1][0], e.end)
        else:
            out.append((e.start, e.end))
    return out


WRITES = [(0, 4096), (3 * MiB + 4096, 70_000), (9 * MiB - 8192, 16384), (12 * MiB, MiB)]


@pytest.mark.parametrize("size", [16 * MiB, 16 * MiB + 512])
def test_extents_and_bytes_equal_qemu_nbds(tmp_path: Path, size: int) -> None:
    image = tmp_path / "disk.raw"
    writes = [*WRITES, (size - 512, 512)]  # data up to the last byte
    content = _sparse(image, size, writes)
    with FileDisk(image) as disk, open_disk(DiskImage(image, "raw", size)) as nbd:
        assert disk.size == nbd.size == size
        mine, theirs = list(disk.extents()), list(nbd.extents())
        assert _data(mine) == _data(theirs)
        assert sum(e.length for e in mine) == size and mine[0].start == 0
        assert all(a.end == b.start for a, b in itertools.pairwise(mine))  # no gap, no overlap
        # a window that starts and ends inside extents
        assert _data(list(disk.extents(3 * MiB, 2 * MiB))) == _data(list(nbd.extents(3 * MiB, 2 * MiB)))
        # aligned buffers (the cycle's), an unaligned bytearray, and the tail
        whole = disk.buffer(size - size % 4096)
        disk.readinto(0, whole)
        assert bytes(whole) == content[: len(whole)]
        odd = bytearray(70_001)
        disk.readinto(3 * MiB + 4095, odd)
        assert bytes(odd) == content[3 * MiB + 4095 : 3 * MiB + 4095 + 70_001]
        tail = bytearray(512)
        disk.readinto(size - 512, tail)
        assert bytes(tail) == content[-512:] == bytes(nbd.read(size - 512, 512))


def test_scattered_pieces_in_one_call(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    content = _sparse(image, 16 * MiB, WRITES)
    bufs = [(off, aligned_buffer(n)) for off, n in [(12 * MiB + MiB // 2, 4096), (0, 8192), (12 * MiB, 4096),
                                                     (12 * MiB + 4096, MiB - 4096)]]
    with FileDisk(image) as disk:
        assert disk.readinto_many(bufs) == sum(len(b) for _, b in bufs)
    for off, b in bufs:
        assert bytes(b) == content[off : off + len(b)]


def test_reads_outside_the_disk_are_refused(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    _sparse(image, MiB, [(0, 4096)])
    with FileDisk(image) as disk, pytest.raises(DiskError, match="outside the disk"):
        disk.readinto(MiB - 4096, bytearray(8192))
    with pytest.raises(DiskError, match="less than its disk's"):
        FileDisk(image, 2 * MiB)


def test_without_o_direct_the_file_is_read_through_the_page_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT (open gives EINVAL: tmpfs before Linux 6.6, some
    FUSE file systems) is read buffered, unaligned pieces included."""
    image = tmp_path / "disk.raw"
    content = _sparse(image, 4 * MiB + 512, [(MiB, 5000), (4 * MiB, 512)])
    real_open = os.open

    def no_direct(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_direct)
    with FileDisk(image) as disk:
        assert not disk.direct
        buf = bytearray(disk.size)
        disk.readinto(0, buf)
        assert bytes(buf) == content
        odd = bytearray(5001)
        disk.readinto(MiB - 1, odd)
        assert bytes(odd) == content[MiB - 1 : MiB + 5000]


def test_a_cycle_reads_raw_in_place_and_other_formats_through_qemu(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.raw"
    _sparse(image, MiB, [(0, 4096)])
    with open_reader(DiskImage(image, "raw", MiB)) as disk:
        assert isinstance(disk, FileDisk)
    monkeypatch.setenv(VIA_NBD_ENV, "1")
    with open_reader(DiskImage(image, "raw", MiB)) as disk:
        assert not isinstance(disk, FileDisk)
    monkeypatch.delenv(VIA_NBD_ENV)
    with open_reader(DiskImage(image, "raw", MiB, offset=4096, length=MiB - 4096)) as disk:
        assert not isinstance(disk, FileDisk)  # inside a container: qemu-nbd's raw offset/size


def _proc_self(name: str, field: str) -> int:
    """A number from ``/proc/self/<name>``: the line ``<field>: <number> ...``."""
    for line in Path("/proc/self", name).read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/{name}")


def _read_bytes() -> int:
    """Bytes this process has had fetched from the block device."""
    return _proc_self("io", "read_bytes")


def test_resident_pages_come_from_the_page_cache_and_the_rest_does_not_enter_it(tmp_path: Path) -> None:
    """A cycle over an image whose pages are in the page cache should not fetch them from the
    device again, nor pull the others into the cache. The device's own count of bytes read
    (``read_bytes``) is the oracle: exactly the pages that were not resident, twice in a row."""
    image = tmp_path / "disk.raw"
    content = random.Random(3).randbytes(8 * MiB)
    image.write_bytes(content)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # nothing resident
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead around what we read
        os.pread(fd, 4 * MiB, 4 * MiB)  # the second half resident
        os.pread(fd, 8192, MiB)  # and an island in the first
    finally:
        os.close(fd)
    with FileDisk(image) as disk:
        if not disk.direct:
            pytest.skip("this file system refuses O_DIRECT: everything is read through the cache")
        for _ in range(2):
            buf = disk.buffer(8 * MiB)
            before = _read_bytes()
            disk.readinto(0, buf)
            assert _read_bytes() - before == 4 * MiB - 8192
            assert bytes(buf) == content


def test_holes_of_the_map_are_zeros_without_a_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a cycle has the whole-disk map, a span across holes asks the kernel only for the
    data: every hole costs a system call otherwise. The buffer is dirty (buffers are used
    again), so zeros in the holes are the disk's own work."""
    image = tmp_path / "disk.raw"
    content = _sparse(image, 4 * MiB, [(0, 8192), (64 * 1024, 4096), (MiB, 12288), (3 * MiB, 4096)])
    asked: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        asked.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    with FileDisk(image) as disk:
        data = sum(e.length for e in disk.extents() if not e.zero)
        assert data < 4 * MiB
        buf = disk.buffer(4 * MiB)
        buf[:] = b"\xff" * len(buf)
        disk.readinto(0, buf)
        assert bytes(buf) == content
        assert sum(asked) == data


def test_a_span_whose_holes_are_cached_is_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holes a reader has read sit in the page cache as zeros: reading them with the data
    around them is one call, where zero-filling them split the span into a call per island
    (9,267 calls instead of 1,068 for the benchmark's 2 GiB image)."""
    image = tmp_path / "disk.raw"
    content = _sparse(image, 4 * MiB, [(0, 8192), (64 * 1024, 4096), (MiB, 12288), (3 * MiB, 4096)])
    assert image.read_bytes() == content  # every page is in the page cache now, holes too
    calls: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    with FileDisk(image) as disk:
        if not disk.direct:
            pytest.skip("this file system refuses O_DIRECT: everything is read through the cache")
        list(disk.extents())  # the whole-disk map, as a cycle asks for it
        buf = disk.buffer(4 * MiB)
        buf[:] = b"\xff" * len(buf)
        disk.readinto(0, buf)
        assert bytes(buf) == content
        assert calls == [0]


def test_cached_page_counts_agree_with_mincore(tmp_path: Path) -> None:
    """``cachestat`` answers "all" or "none" without mapping the file; anything between goes
    to ``mincore``, page by page. Both must see the same pages."""
    image = tmp_path / "disk.raw"
    image.write_bytes(random.Random(4).randbytes(4 * MiB))
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(fd, 2 * MiB, 2 * MiB)  # the second half resident
    finally:
        os.close(fd)
    with FileDisk(image) as disk:
        if not disk.direct or not disk._cachestat:
            pytest.skip("no O_DIRECT here, or a kernel without cachestat (before Linux 6.5)")
        pages = MiB // 4096
        assert disk._cached_pages(0, 2 * MiB) == 0
        assert disk._cached_pages(2 * MiB, 2 * MiB) == 2 * pages
        assert disk._cached_pages(MiB, 2 * MiB) == pages
        assert disk._resident(0, MiB) == bytes(pages)  # none: cachestat alone
        assert disk._resident(2 * MiB, MiB) == b"\1" * pages  # all: cachestat alone
        assert disk._resident(MiB, 2 * MiB) == bytes(pages) + b"\1" * pages  # some: mincore
        assert disk._cachestat


def test_a_span_all_in_the_page_cache_is_a_view_of_the_file_and_others_are_not(tmp_path: Path) -> None:
    """A cycle takes a chunk whose every page is cached as a view of the file's mapping (no
    copy); a chunk with any page not cached is none of that (it is read, direct where not
    cached). The device's own count of bytes read shows the view cost no I/O."""
    image = tmp_path / "disk.raw"
    content = random.Random(5).randbytes(4 * MiB + 512)  # a size that is not whole pages
    image.write_bytes(content)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(fd, 2 * MiB, 2 * MiB)  # [2, 4) MiB resident
    finally:
        os.close(fd)
    with FileDisk(image) as disk:
        if not disk.direct or not disk._cachestat:
            pytest.skip("no O_DIRECT here, or a kernel without cachestat (before Linux 6.5)")
        assert disk.mapped(0, MiB) is None  # nothing of it cached
        assert disk.mapped(MiB + MiB // 2, MiB) is None  # half of it
        assert disk.mapped(4 * MiB, 512) is None  # the tail's page is not cached yet
        assert disk.mapped(3 * MiB, 2 * MiB) is None  # beyond the disk
        before = _read_bytes()
        view = disk.mapped(2 * MiB, 2 * MiB)
        assert view is not None and view.readonly
        assert bytes(view) == content[2 * MiB : 4 * MiB]
        assert _read_bytes() == before
        with image.open("rb") as f:  # a buffered read of the tail: its page is cached now
            f.seek(4 * MiB)
            assert f.read() == content[4 * MiB :]
        tail = disk.mapped(4 * MiB, 512)
        assert tail is not None and bytes(tail) == content[4 * MiB :]
    assert bytes(view) == content[2 * MiB : 4 * MiB]  # a view kept past close is still the file


def test_a_file_cut_shorter_after_opening_is_read_not_mapped_and_its_end_is_an_error(tmp_path: Path) -> None:
    """The mapping covers the size the file had at open; touching a mapped page past the new
    end would kill the process (SIGBUS). A span past the file's current end is therefore
    read, and the read names the end of the file."""
    image = tmp_path / "disk.raw"
    image.write_bytes(random.Random(6).randbytes(4 * MiB))
    with FileDisk(image) as disk:
        if disk._map_view is None:
            pytest.skip("no mapping here (no O_DIRECT or no cachestat)")
        assert disk.mapped(2 * MiB, MiB) is not None
        os.truncate(image, 2 * MiB + 4096)
        assert disk.mapped(2 * MiB, MiB) is None
        with pytest.raises(DiskError, match="unexpected end of file"):
            disk.readinto(2 * MiB, disk.buffer(MiB))


def _rss_file_kib() -> int:
    """KiB of files mapped into this process and resident."""
    return _proc_self("status", "RssFile")


def test_a_view_given_back_leaves_the_process_s_page_tables(tmp_path: Path) -> None:
    """Every page a cycle looks at through the mapping would stay mapped until the disk is
    closed (RSS growing to the image's size on a big disk); ``unmap`` drops a finished chunk's
    pages from the process, not from the page cache, and the view still reads the file."""
    image = tmp_path / "disk.raw"
    content = random.Random(8).randbytes(16 * MiB)
    image.write_bytes(content)
    with FileDisk(image) as disk:
        if disk._map_view is None:
            pytest.skip("no mapping here (no O_DIRECT or no cachestat)")
        before = _rss_file_kib()
        view = disk.mapped(0, 16 * MiB)
        assert view is not None and bytes(view) == content  # every page touched: mapped
        touched = _rss_file_kib()
        assert touched - before >= 15 * 1024
        disk.unmap(0, 16 * MiB)
        assert touched - _rss_file_kib() >= 15 * 1024
        assert disk._cached_pages(0, 16 * MiB) == 16 * MiB // 4096  # still in the page cache
        assert bytes(view[MiB : 2 * MiB]) == content[MiB : 2 * MiB]
