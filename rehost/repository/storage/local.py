"""The local backend: a repository in a directory (the embedded default of a vault).

Layout (docs/design.md §2)::

    <root>/config
    <root>/keys/<name>
    <root>/data/<name[:2]>/<name>      fan-out: tens of thousands of packs in one folder
    <root>/index/<name>                 make listing and lookups slow on many file systems
    <root>/points/<name>
    <root>/locks/<name>

``save`` is atomic and durable: the bytes go to a ``.tmp-*`` file in the target folder, which
is fsynced, then hard-linked to its final name (``link`` fails if the name exists, so an
object is never replaced, even by a racing writer), and the folder is fsynced so the new name
survives a power loss. A crash leaves at most a temp file, which no listing shows and
``remove_stale_temp_files`` (called by prune) deletes.

Packs are written with ``O_DIRECT`` where the file system takes it: on the machine of
docs/benchmarks.md, 1.5 GiB of 16 MiB packs written through the page cache and fsynced cost
1.6-4.1 s of system time, written directly 0.1 s (issue 17); and a replication's packs do not
push a production host's working set out of memory. The tail is padded to the alignment, then
the file truncated to its length, before the fsync and the link.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rehost.errors import (
    AlreadyExists,
    BackendError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    UsageError,
)
from rehost.repository.aligned import ALIGN, aligned_length, thread_buffer
from rehost.repository.storage.base import Kind, ObjectInfo
from rehost.repository.storage.contract import (
    CONFIG_NAME,
    TEMP_PREFIX,
    check_name,
    describe,
    is_valid_name,
    range_bounds,
)

log = logging.getLogger(__name__)

#: The folders ``create`` makes; ``Kind.CONFIG`` is a file in the root instead.
FOLDER_KINDS = tuple(k for k in Kind if k is not Kind.CONFIG)
#: Objects are immutable; read-only files make an accidental in-place write fail loudly.
FILE_MODE = 0o444
#: Errors a second try may not hit (a busy or briefly unreachable network file system).
RETRYABLE_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT})
#: ``link`` errors meaning "this file system has no hard links" (FAT, some FUSE/SMB mounts).
NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: objects at least this large are written with O_DIRECT (packs; not index files or points)
DIRECT_MIN = 1 << 20


class LocalStorage:
    """A repository in an existing directory; ``LocalStorage.create`` makes a new one."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.location = f"local:{self.root}"
        if not self.root.is_dir():
            raise NotFound(f"no repository at {self.root}: not a directory")
        missing = [k.value for k in FOLDER_KINDS if not (self.root / k.value).is_dir()]
        if missing:
            raise NotFound(
                f"{self.root} is not a rehost repository (missing {', '.join(missing)}/)"
            )

    @classmethod
    def create(cls, root: Path | str) -> LocalStorage:
        """Make the folder tree in a new or empty directory; refuse anything else.

        Refusing a non-empty directory protects both an existing repository and a user's
        files from a mistyped path.
        """
        root = Path(root).absolute()
        if root.exists() and not root.is_dir():
            raise UsageError(f"cannot create a repository at {root}: it is not a directory")
        if root.is_dir() and any(root.iterdir()):
            if (root / CONFIG_NAME).exists() or (root / Kind.DATA.value).is_dir():
                raise AlreadyExists(f"a repository already exists at {root}")
            raise AlreadyExists(f"cannot create a repository at {root}: the directory is not empty")
        try:
            root.mkdir(parents=True, exist_ok=True)
            for kind in FOLDER_KINDS:
                (root / kind.value).mkdir()
                _fsync_dir(root / kind.value)
            _fsync_dir(root)
            _fsync_dir(root.parent)
        except OSError as e:
            raise _backend_error(e, f"cannot create a repository at {root}") from e
        return cls(root)

    # -- the Storage protocol -------------------------------------------------------------

    def save(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        path = self._path(kind, name)
        what = describe(kind, name)
        if os.path.lexists(path):  # cheap early answer; the link below is the real check
            raise self._exists(kind, name)
        try:
            if kind is Kind.DATA:
                self._make_fanout_dir(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        except OSError as e:
            raise _backend_error(e, f"cannot save {what} in {self.location}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                if len(data) < DIRECT_MIN or not _write_direct(f.fileno(), data):
                    f.write(data)
                    f.flush()
                os.fchmod(f.fileno(), FILE_MODE)
                os.fsync(f.fileno())
            self._publish(tmp, path, kind, name)
            _fsync_dir(path.parent)
        except OSError as e:
            raise _backend_error(e, f"cannot save {what} in {self.location}") from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start, end = range_bounds(size, offset, length, kind=kind, name=name)
                f.seek(start)
                data = f.read(end - start)  # a buffered read loops until it has them all
        except FileNotFoundError:
            raise self._not_found(kind, name) from None
        except OSError as e:
            raise _backend_error(e, f"cannot load {describe(kind, name)}") from e
        if len(data) != end - start:  # the file shrank under us: immutable objects don't
            raise IntegrityError(
                f"short read of {describe(kind, name)}: {len(data)} of {end - start} bytes"
            )
        return data

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        path = self._path(kind, name)
        try:
            return ObjectInfo(kind, name, path.stat().st_size)
        except FileNotFoundError:
            raise self._not_found(kind, name) from None
        except OSError as e:
            raise _backend_error(e, f"cannot stat {describe(kind, name)}") from e

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        """Yield the complete objects of a kind; temp and foreign files are skipped."""
        if kind is Kind.CONFIG:
            with contextlib.suppress(ObjectNotFound):
                yield self.stat(kind, CONFIG_NAME)
            return
        folder = self.root / kind.value
        if kind is not Kind.DATA:
            yield from self._list_folder(kind, folder, fanout=None)
            return
        for sub in _scandir(folder):
            if sub.is_dir(follow_symlinks=False) and not sub.name.startswith("."):
                yield from self._list_folder(kind, Path(sub.path), fanout=sub.name)

    def remove(self, kind: Kind, name: str) -> None:
        path = self._path(kind, name)
        try:
            os.unlink(path)
            _fsync_dir(path.parent)  # a removed lock must stay removed after a crash
        except FileNotFoundError:
            raise self._not_found(kind, name) from None
        except OSError as e:
            raise _backend_error(e, f"cannot remove {describe(kind, name)}") from e

    def room_to_defer(self, nbytes: int) -> bool:
        """Three times the bytes free: the plain copy, its compressed copy written by prune
        before the plain one goes, and room for everything else."""
        try:
            return shutil.disk_usage(self.root).free >= 3 * nbytes
        except OSError:
            return False

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    # -- local only -----------------------------------------------------------------------

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        """Delete temp files older than ``older_than_s`` seconds; return how many.

        They are leftovers of a save interrupted by a crash. The age limit keeps prune from
        deleting the temp file of a save that is still running in another process.
        """
        cutoff = time.time() - older_than_s
        folders = [self.root] + [self.root / k.value for k in FOLDER_KINDS]
        folders += [Path(e.path) for e in _scandir(self.root / Kind.DATA.value) if e.is_dir()]
        removed = 0
        for folder in folders:
            for entry in _scandir(folder):
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # its save finished or another prune got it first
                except OSError as e:
                    raise _backend_error(e, f"cannot remove temp file {entry.path}") from e
        if removed:
            log.info("removed %d stale temp files from %s", removed, self.location)
        return removed

    # -- helpers --------------------------------------------------------------------------

    def _path(self, kind: Kind, name: str) -> Path:
        check_name(kind, name)
        if kind is Kind.CONFIG:
            return self.root / CONFIG_NAME
        if kind is Kind.DATA:
            return self.root / kind.value / name[:2] / name
        return self.root / kind.value / name

    def _make_fanout_dir(self, folder: Path) -> None:
        try:
            folder.mkdir()
        except FileExistsError:
            return
        _fsync_dir(folder.parent)  # the new folder's entry must be durable before its files

    def _publish(self, tmp: str, path: Path, kind: Kind, name: str) -> None:
        """Give the temp file its final name without ever replacing an existing object."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise self._exists(kind, name) from None
        except OSError as e:
            if e.errno not in NO_LINK_ERRNOS:
                raise
            # No hard links here: rename after a check. Two writers racing on one name can
            # then both succeed, the later one replacing the earlier; pack, index and point
            # names are content hashes, so both wrote the same bytes. Locks need link().
            if os.path.lexists(path):
                raise self._exists(kind, name) from None
            os.rename(tmp, path)

    def _list_folder(
        self, kind: Kind, folder: Path, fanout: str | None
    ) -> Iterator[ObjectInfo]:
        for entry in _scandir(folder):
            name = entry.name
            if not is_valid_name(name) or (fanout is not None and name[:2] != fanout):
                continue  # temp files, and anything that is not ours
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we listed
            if not entry.is_dir(follow_symlinks=False):
                yield ObjectInfo(kind, name, st.st_size)

    def _exists(self, kind: Kind, name: str) -> AlreadyExists:
        return AlreadyExists(f"{describe(kind, name)} already exists in {self.location}")

    def _not_found(self, kind: Kind, name: str) -> ObjectNotFound:
        return ObjectNotFound(f"{describe(kind, name)} not found in {self.location}")


def _scandir(folder: Path) -> builtins.list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return builtins.list(it)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise _backend_error(e, f"cannot list {folder}") from e


_direct_buffers = threading.local()  # other objects copied for O_DIRECT (aligned.thread_buffer)


def _write_direct(fd: int, data: bytes | memoryview) -> bool:
    """Write ``data`` at the start of the empty file ``fd`` with O_DIRECT: from where it lies if
    it was laid out for it (``_laid_out``: a pack), else through an aligned buffer of this
    thread's (kept for the next object: mapping fresh pages costs more than the copy). False
    where the file system refuses O_DIRECT (tmpfs), having written nothing."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    try:
        size = aligned_length(len(data))
        view = _laid_out(data, size)
        if view is None:
            view = memoryview(thread_buffer(_direct_buffers, size))[:size]
            if isinstance(data, bytes):  # ctypes.memmove gives the GIL up (a slice assignment keeps it)
                ctypes.memmove(_address(view), data, len(data))
            else:
                view[: len(data)] = data
        try:
            view[len(data) : size] = bytes(size - len(data))
            done = 0
            while done < size:
                n = os.write(fd, view[done:size])
                if n % ALIGN:  # a short write the next O_DIRECT write cannot follow
                    raise OSError(errno.EIO, "short O_DIRECT write")
                done += n
        finally:
            view.release()
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        os.ftruncate(fd, 0)  # refused after all (an unaligned device): write it buffered
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    os.ftruncate(fd, len(data))
    return True


def _laid_out(data: bytes | memoryview, size: int) -> memoryview | None:
    """``data`` and the ``size - len(data)`` bytes after it, if ``data`` is a view at the start
    of a (page-aligned) anonymous mapping that long: what ``PackWriter.finish`` gives, whose
    bytes past the pack are the writer's scratch space. None for anything else."""
    if not isinstance(data, memoryview) or not isinstance(data.obj, mmap.mmap) or len(data.obj) < size:
        return None
    if data.readonly or not data.c_contiguous or data.nbytes != len(data):
        return None
    whole = memoryview(data.obj)
    if _address(data) != _address(whole):
        whole.release()
        return None
    return whole[:size]


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a new or removed name) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backend_error(e: OSError, what: str) -> BackendError:
    return BackendError(f"{what}: {e.strerror or e}", retryable=e.errno in RETRYABLE_ERRNOS)
