"""LocalStorage beyond the shared contract: layout, crash leftovers, durability, odd file systems."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import time
from pathlib import Path

import pytest

from rehost.errors import AlreadyExists, BackendError, NotFound, UsageError
from rehost.repository.storage import Kind, LocalStorage

PACK_ID = hashlib.sha256(b"pack").hexdigest()


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".tmp-*"))


@pytest.fixture
def repo(tmp_path: Path) -> LocalStorage:
    return LocalStorage.create(tmp_path / "repo")


def test_create_makes_the_layout(tmp_path: Path) -> None:
    storage = LocalStorage.create(tmp_path / "new" / "repo")
    root = tmp_path / "new" / "repo"
    assert sorted(p.name for p in root.iterdir()) == ["data", "index", "keys", "locks", "points"]
    assert storage.location == f"local:{root}"


def test_objects_land_where_the_design_says(repo: LocalStorage) -> None:
    repo.save(Kind.CONFIG, "config", b"{}")
    repo.save(Kind.DATA, PACK_ID, b"pack")
    repo.save(Kind.POINTS, "p1", b"point")
    root = repo.root
    assert (root / "config").read_bytes() == b"{}"
    assert (root / "data" / PACK_ID[:2] / PACK_ID).read_bytes() == b"pack"
    assert (root / "points" / "p1").read_bytes() == b"point"
    assert stat.S_IMODE((root / "points" / "p1").stat().st_mode) == 0o444
    assert temp_files(root) == []


def test_create_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(AlreadyExists, match="not empty"):
        LocalStorage.create(tmp_path / "photos")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]


def test_create_refuses_an_existing_repository(repo: LocalStorage) -> None:
    with pytest.raises(AlreadyExists, match="already exists"):
        LocalStorage.create(repo.root)


def test_create_accepts_an_empty_directory(tmp_path: Path) -> None:
    LocalStorage.create(tmp_path)
    assert (tmp_path / "data").is_dir()


def test_create_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(UsageError):
        LocalStorage.create(tmp_path / "f")


def test_open_needs_an_existing_repository(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LocalStorage(tmp_path / "missing")
    with pytest.raises(NotFound, match="not a rehost repository"):
        LocalStorage(tmp_path)


def test_reopen_sees_the_objects(repo: LocalStorage) -> None:
    repo.save(Kind.INDEX, "i1", b"index")
    again = LocalStorage(repo.root)
    assert again.load(Kind.INDEX, "i1") == b"index"


def test_crash_mid_save_leaves_an_unlisted_temp_file_that_prune_removes(
    repo: LocalStorage,
) -> None:
    """A child process dies (no cleanup at all) right before the object gets its name."""
    pid = os.fork()
    if pid == 0:  # the child: die like kill -9 at the worst moment
        os.link = lambda *a, **k: os._exit(0)
        try:
            repo.save(Kind.DATA, PACK_ID, b"half a cycle")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    leftovers = temp_files(repo.root)
    assert len(leftovers) == 1 and leftovers[0].parent == repo.root / "data" / PACK_ID[:2]
    assert list(repo.list(Kind.DATA)) == []
    repo.save(Kind.DATA, PACK_ID, b"the retried cycle")  # the name is still free

    assert repo.remove_stale_temp_files(older_than_s=3600) == 0  # too young to be stale
    an_hour_ago = time.time() - 3601
    os.utime(leftovers[0], (an_hour_ago, an_hour_ago))
    assert repo.remove_stale_temp_files(older_than_s=3600) == 1
    assert temp_files(repo.root) == []
    assert repo.load(Kind.DATA, PACK_ID) == b"the retried cycle"


def test_remove_stale_temp_files_keeps_fresh_ones(repo: LocalStorage) -> None:
    old = time.time() - 7200
    for folder in (repo.root, repo.root / "keys", repo.root / "locks"):
        (folder / ".tmp-old").write_bytes(b"x")
        os.utime(folder / ".tmp-old", (old, old))
        (folder / ".tmp-new").write_bytes(b"x")
    assert list(repo.list(Kind.KEYS)) == [] and list(repo.list(Kind.CONFIG)) == []
    assert repo.remove_stale_temp_files(older_than_s=3600) == 3
    assert [p.name for p in temp_files(repo.root)] == [".tmp-new"] * 3


def test_foreign_files_are_not_listed(repo: LocalStorage) -> None:
    repo.save(Kind.DATA, PACK_ID, b"pack")
    (repo.root / "index" / "README.TXT").write_bytes(b"hands off")
    (repo.root / "index" / "subdir").mkdir()
    (repo.root / "data" / "zz").mkdir()
    (repo.root / "data" / "zz" / PACK_ID).write_bytes(b"wrong fan-out folder")
    (repo.root / "data" / "stray-file").write_bytes(b"not in a fan-out folder")
    assert list(repo.list(Kind.INDEX)) == []
    assert [i.name for i in repo.list(Kind.DATA)] == [PACK_ID]


def test_save_fsyncs_the_file_and_its_folder(
    repo: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    repo.save(Kind.DATA, PACK_ID, b"pack")
    fanout = repo.root / "data" / PACK_ID[:2]
    # The temp file (before its link), the new fan-out folder's parent, the object's folder.
    assert any(Path(p).name.startswith(".tmp-") for p in synced)
    assert str(repo.root / "data") in synced
    assert str(fanout) == synced[-1]


def test_file_systems_without_hard_links(
    repo: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    repo.save(Kind.POINTS, "p1", b"first")
    with pytest.raises(AlreadyExists):
        repo.save(Kind.POINTS, "p1", b"second")
    assert repo.load(Kind.POINTS, "p1") == b"first"
    assert temp_files(repo.root) == []


def test_a_failed_save_leaves_no_temp_file(
    repo: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BackendError, match="No space left") as e:
        repo.save(Kind.INDEX, "i1", b"index")
    assert not e.value.retryable
    assert temp_files(repo.root) == []
    monkeypatch.undo()
    assert list(repo.list(Kind.INDEX)) == []


@pytest.mark.parametrize("direct", [True, False])
def test_packs_are_written_directly_or_through_the_cache_with_the_same_bytes(
    repo: LocalStorage, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Large objects go through O_DIRECT (an aligned buffer, the tail padded then truncated);
    where the file system refuses it (EINVAL), through the page cache. Either way the object
    holds exactly its bytes, at every length around the alignment and the threshold."""
    from rehost.repository.storage import local

    used: list[bool] = []
    real_write_direct = local._write_direct

    def spy(fd: int, data: bytes) -> bool:
        used.append(real_write_direct(fd, data))
        return used[-1]

    monkeypatch.setattr(local, "_write_direct", spy)
    if not direct:
        real_fcntl = local.fcntl.fcntl

        def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == local.fcntl.F_SETFL and arg & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_fcntl(fd, cmd, arg)

        monkeypatch.setattr(local.fcntl, "fcntl", no_direct)
    rng = random.Random(3)
    sizes = [local.DIRECT_MIN - 1, local.DIRECT_MIN, local.DIRECT_MIN + 1, 3 * local.DIRECT_MIN + 4097,
             (16 << 20) + 5, 2 * local.DIRECT_MIN]  # the last: smaller than the buffer kept
    for size in sizes:
        data = rng.randbytes(size)
        name = hashlib.sha256(data).hexdigest()
        repo.save(Kind.DATA, name, data)
        assert repo.stat(Kind.DATA, name).size == size
        assert repo.load(Kind.DATA, name) == data
        assert repo.load(Kind.DATA, name, size - 10, 10) == data[-10:]
        assert stat.S_IMODE((repo.root / "data" / name[:2] / name).stat().st_mode) == 0o444
    assert used == [direct] * (len(sizes) - 1)  # the first is below the threshold: not tried
    assert temp_files(repo.root) == []


def test_a_pack_laid_out_by_its_writer_is_written_from_where_it_lies(
    repo: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PackWriter.finish`` lays a pack out in a page-aligned buffer with room to the
    alignment, and the local backend writes it with O_DIRECT from there, without a copy; a view
    that does not start the buffer (or any other object) is copied first. Both hold exactly
    their bytes, and a second pack laid out in the same buffer does not change the first."""
    from rehost.repository import pack as pack_module
    from rehost.repository.crypto import KeyMaterial, Sealer
    from rehost.repository.storage import local

    seen: list[bool] = []
    real_laid_out = local._laid_out

    def spy(data: bytes | memoryview, size: int) -> memoryview | None:
        view = real_laid_out(data, size)
        seen.append(view is not None)
        return view

    monkeypatch.setattr(local, "_laid_out", spy)
    rng = random.Random(5)
    stored = {}
    for sizes in ([4096] * 300 + [1 << 20] * 2 + [4097], [(1 << 20) + 3, 65536, 511]):
        writer = pack_module.PackWriter()
        for i, n in enumerate(sizes):
            writer.add(f"{i:064x}", rng.randbytes(n), n)
        name, data = writer.finish(Sealer(KeyMaterial.generate(encrypted=False)))
        expected = bytes(data)
        assert pack_module.names_pack(name, expected)
        repo.save(Kind.DATA, name, data)
        stored[name] = expected
        offset = data[1:]  # not at the start of the buffer: copied
        repo.save(Kind.DATA, hashlib.sha256(offset).hexdigest(), offset)
        stored[hashlib.sha256(offset).hexdigest()] = bytes(offset)
    assert seen == [True, False, True, False]
    for name, expected in stored.items():
        assert repo.load(Kind.DATA, name) == expected
    assert temp_files(repo.root) == []
