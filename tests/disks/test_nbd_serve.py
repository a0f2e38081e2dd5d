"""The Python NBD server, driven by real clients: qemu-img, qemu-io, nbdinfo, libnbd, QEMU.

What is served is a recovery point read straight from a repository (``PointReader``): a
delta point (overlaid on a full one) made by ``run_cycle`` from a sparse image, so every
client sees holes, data and the point's exact bytes. Nothing is mocked.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbd
import pytest

from rehost.disks import open_disk, open_nbd, probe
from rehost.disks.extent import Extent
from rehost.disks.nbd_serve import (
    CMD_BLOCK_STATUS,
    CMD_READ,
    IHAVEOPT,
    NBDMAGIC,
    OPT_GO,
    OPT_SET_META_CONTEXT,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    OPTION_REPLY_MAGIC,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REPLY_FLAG_DONE,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    NbdExportServer,
)
from rehost.errors import DiskError
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.point_reader import PointReader
from rehost.repository.repository import Repository
from rehost.repository.storage import FaultyStorage, LocalStorage, Storage
from rehost.repository.storage.base import Kind

from .images import run

MiB = 1 << 20


@dataclass
class Served:
    """A repository holding a delta point of ``source`` (and its full base)."""

    storage: Storage
    repo: Repository
    point: RecoveryPoint
    source: Path
    data: bytes


@pytest.fixture(scope="module")
def served(master: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    folder = tmp_path_factory.mktemp("served")
    source = folder / "source.raw"
    shutil.copyfile(master, source)
    storage = LocalStorage.create(folder / "repo")
    repo = Repository.create(storage)
    cache = DigestCache(folder / "cache")
    with open_disk(probe(source)) as disk:
        full = run_cycle(repo, cache, "vm", [(0, disk)], parent=None).point
    rng = random.Random(21)
    with open(source, "r+b") as f:  # a second cycle: data into a hole, overwrite, zero out
        for off, data in [
            (8 * MiB + 1000, rng.randbytes(300_000)),
            (17 * MiB + 4096, rng.randbytes(8192)),
            (1 * MiB + 4096, bytes(65536)),
        ]:
            f.seek(off)
            f.write(data)
    with open_disk(probe(source)) as disk:
        point = run_cycle(repo, cache, "vm", [(0, disk)], parent=full).point
    assert point.disks[0].base == full.id
    return Served(storage, repo, point, source, source.read_bytes())


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short folder for sockets (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rehost-nbdtest-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(served: Served, sockdir: Path) -> Iterator[NbdExportServer]:
    with NbdExportServer(PointReader(served.repo, served.point, 0), sockdir / "nbd.sock") as s:
        yield s


def _handle(uri: str, *, structured: bool = True, strict: bool = True) -> nbd.NBD:
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if not strict:
        h.set_strict_mode(0)  # let libnbd send what a buggy client would
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h


def _errno_of(call: object, *args: object) -> int:
    with pytest.raises(nbd.Error) as err:
        call(*args)  # type: ignore[operator]
    return int(err.value.errnum)


# -- (a), (b), (c): whole-disk compare, holes, random reads ----------------------------------


def test_qemu_img_compare_says_identical(server: NbdExportServer, served: Served) -> None:
    r = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri, str(served.source)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0 and "identical" in r.stdout, r.stderr
    assert server.errors == 0


def test_nbdinfo_map_shows_the_holes(server: NbdExportServer, served: Served) -> None:
    out = subprocess.run(
        ["nbdinfo", "--map", server.uri], capture_output=True, text=True, check=True
    ).stdout
    extents = []
    for line in out.splitlines():
        start, length, flags, *_ = line.split()
        extents.append(Extent(int(start), int(length), int(flags) == 3))
    reader = PointReader(served.repo, served.point, 0)
    assert extents == list(reader.extents())
    assert any(e.zero for e in extents) and any(not e.zero for e in extents)
    for e in extents:  # the map is true to the bytes
        chunk = served.data[e.start : e.end]
        assert (chunk == bytes(e.length)) if e.zero else (chunk != bytes(e.length))
    with open_nbd(server.uri) as disk:  # libnbd block status through NbdDisk, by pieces
        assert list(disk.extents()) == extents
        assert list(disk.extents(8 * MiB + 1000, 5)) == [Extent(8 * MiB + 1000, 5, False)]
    info = subprocess.run(["nbdinfo", server.uri], capture_output=True, text=True, check=True).stdout
    assert "is_read_only: true" in info and "base:allocation" in info
    assert f"export-size: {len(served.data)}" in info


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_random_reads_match(server: NbdExportServer, served: Served, structured: bool) -> None:
    data = served.data
    rng = random.Random(5)
    h = _handle(server.uri, structured=structured)
    try:
        assert h.get_structured_replies_negotiated() == structured
        for _ in range(300):
            off = rng.randrange(len(data))
            n = rng.randrange(1, min(4 * MiB, len(data) - off) + 1)
            assert h.pread(n, off) == data[off : off + n], (off, n)
        for off in range(0, len(data), 32 * MiB):  # the largest reads allowed
            assert h.pread(32 * MiB, off) == data[off : off + 32 * MiB]
    finally:
        h.shutdown()


def test_many_clients_at_once(server: NbdExportServer, served: Served) -> None:
    data = served.data
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with open_nbd(server.uri) as disk:
                for _ in range(60):
                    off = rng.randrange(len(data))
                    n = rng.randrange(1, min(3 * MiB, len(data) - off) + 1)
                    if disk.read(off, n) != data[off : off + n]:
                        failures.append(f"{seed}: {off}+{n}")
        except Exception as e:  # a thread's exception would not fail the test by itself
            failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert server.errors == 0 and server.bytes_served > 0


# -- (d): a qcow2 overlay on the export, as a failed-over VM uses it -------------------------


def test_overlay_writes_stay_local_and_rebase_pulls_everything(
    server: NbdExportServer, served: Served, tmp_path: Path
) -> None:
    overlay = tmp_path / "ov.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", server.uri, "-F", "raw", overlay)
    # One write inside data, one across the end of a data region into a hole.
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 61440 8192", overlay)
    expected = bytearray(served.data)
    expected[0:65536] = b"\xab" * 65536
    expected[61440 : 61440 + 8192] = b"\xcd" * 8192
    want = tmp_path / "expected.raw"
    want.write_bytes(expected)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay, want)  # through the chain
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", server.uri, served.source)  # untouched
    run("qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", overlay)  # hydrate offline
    info = subprocess.run(["qemu-img", "info", str(overlay)], capture_output=True, text=True).stdout
    assert "backing file" not in info
    server.stop()  # the overlay no longer needs the repository
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay, want)


def test_block_stream_in_a_running_qemu(server: NbdExportServer, served: Served, tmp_path: Path) -> None:
    """What instant recovery does: QEMU runs on the overlay while block-stream hydrates it."""
    from rehost.testkit import Drive, QemuVM

    overlay = tmp_path / "ov.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", server.uri, "-F", "raw", overlay)
    # -S: the CPUs never start (there is nothing to boot); the block layer runs regardless.
    with QemuVM([Drive(overlay, fmt="qcow2", id="disk0")], extra_args=["-S"]) as vm:
        vm.qmp("block-stream", **{"job-id": "hydrate0", "device": "disk0"})
        deadline = time.monotonic() + 60
        while vm.qmp("query-block-jobs"):
            assert time.monotonic() < deadline, "block-stream did not finish"
            time.sleep(0.1)
        assert vm._qmp is not None
        done = [e for e in vm._qmp.events if e.get("event") == "BLOCK_JOB_COMPLETED"]
        assert done and "error" not in done[0]["data"], vm._qmp.events
        vm.stop(graceful_timeout=0)  # no guest runs (-S): nothing to power down
    assert server.errors == 0
    server.stop()
    info = subprocess.run(["qemu-img", "info", str(overlay)], capture_output=True, text=True).stdout
    assert "backing file" not in info
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay, served.source)


# -- (e): damage is an I/O error at the client, never wrong data ------------------------------


def test_corrupt_blob_is_an_io_error(served: Served, sockdir: Path) -> None:
    faulty = FaultyStorage(served.storage, corrupt_load=lambda kind, name: kind is Kind.DATA)
    repo = Repository.open(faulty)
    with NbdExportServer(PointReader(repo, served.point, 0), sockdir / "bad.sock") as server:
        for structured in (True, False):
            h = _handle(server.uri, structured=structured)
            assert _errno_of(h.pread, 4096, 0) == errno.EIO
            assert _errno_of(h.pread, 4096, 17 * MiB) == errno.EIO
            assert h.pread(4096, 30 * MiB) == bytes(4096)  # holes need no blob: still served
            h.shutdown()
        r = subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, str(sockdir / "out.raw")],
            capture_output=True, text=True,
        )
        assert r.returncode != 0 and "Input/output error" in r.stderr
        assert server.errors >= 4
    assert faulty.corrupted > 0


# -- (f): bad requests get errors and the connection keeps serving ----------------------------


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_bad_requests_get_errors(server: NbdExportServer, served: Served, structured: bool) -> None:
    size = len(served.data)
    h = _handle(server.uri, structured=structured, strict=False)
    try:
        assert _errno_of(h.pread, 8192, size - 4096) == errno.EINVAL  # past the end
        assert _errno_of(h.pread, 33 * MiB, 0) == errno.EINVAL  # larger than 32 MiB
        assert _errno_of(h.pwrite, b"x" * 4096, 0) == errno.EPERM
        assert _errno_of(h.trim, 4096, 0) == errno.EPERM
        assert _errno_of(h.zero, 4096, 0) == errno.EPERM
        if structured:
            assert _errno_of(h.block_status, 8192, size - 4096, lambda *a: 0) == errno.EINVAL
        h.flush()  # a no-op, but a successful one
        assert h.pread(4096, 17 * MiB) == served.data[17 * MiB : 17 * MiB + 4096]
    finally:
        h.shutdown()
    assert server.errors >= 5


def test_negotiation_variants(server: NbdExportServer, served: Served, sockdir: Path) -> None:
    # Old clients: NBD_OPT_EXPORT_NAME, no structured replies, 124 zero bytes.
    h = nbd.NBD()
    h.set_handshake_flags(0)
    h.set_request_structured_replies(False)
    h.connect_uri(server.uri)
    assert h.get_protocol() == "newstyle"
    assert h.get_size() == len(served.data) and h.is_read_only()
    assert h.pread(4096, 17 * MiB) == served.data[17 * MiB : 17 * MiB + 4096]
    h.shutdown()
    # Option mode: list exports and contexts, then go.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(server.uri)
    names: list[str] = []
    contexts: list[str] = []

    def add(found: list[str], name: str, *_: str) -> int:
        found.append(name)
        return 0

    h.opt_list(lambda *a: add(names, *a))
    assert names == [""]
    h.opt_list_meta_context(lambda *a: add(contexts, *a))
    assert contexts == ["base:allocation"]
    h.opt_info()
    assert h.get_size() == len(served.data)
    h.opt_abort()
    # A named export: its name or the default name work, another name does not.
    reader = PointReader(served.repo, served.point, 0)
    with NbdExportServer(reader, sockdir / "named.sock", export_name="vm-disk0") as named:
        assert named.uri.startswith("nbd+unix:///vm-disk0?socket=")
        with open_nbd(named.uri) as disk:
            assert disk.read(0, 512) == served.data[:512]
        with open_nbd(named.socket_path) as disk:  # default export
            assert disk.size == len(served.data)
        with pytest.raises(DiskError):
            open_nbd(named.socket_path, export_name="other")


def _raw_client(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    magic, opt_magic, flags = struct.unpack(">QQH", _recv(s, 18))
    assert (magic, opt_magic, flags) == (NBDMAGIC, IHAVEOPT, 3)
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    return s


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _option(s: socket.socket, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
    """Send an option; the replies up to the final one (ACK or an error)."""
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    replies = []
    while True:
        magic, got_opt, reply, length = struct.unpack(">QIII", _recv(s, 20))
        assert (magic, got_opt) == (OPTION_REPLY_MAGIC, opt)
        replies.append((reply, _recv(s, length)))
        if reply == REP_ACK or reply & 0x80000000:
            return replies


def test_protocol_edges_on_a_raw_socket(server: NbdExportServer, served: Served) -> None:
    s = _raw_client(server.socket_path)
    with s:
        assert _option(s, 42)[-1][0] == REP_ERR_UNSUP  # unknown option: refused, not fatal
        assert _option(s, OPT_STARTTLS)[-1][0] == REP_ERR_UNSUP
        query = struct.pack(">II", 0, 1) + struct.pack(">I", 15) + b"base:allocation"
        assert _option(s, OPT_SET_META_CONTEXT, query)[-1][0] == REP_ERR_INVALID  # no structured
        assert _option(s, OPT_GO, b"\x00\x00")[-1][0] == REP_ERR_INVALID  # truncated
        replies = _option(s, OPT_GO, struct.pack(">IH", 0, 0))
        assert [r for r, _ in replies] == [REP_INFO, REP_ACK]
        _, size, flags = struct.unpack(">HQH", replies[0][1])
        assert size == len(served.data) and flags & 0b11 == 0b11  # HAS_FLAGS | READ_ONLY
        # An unknown command gets EINVAL (simple reply), then reads still work.
        s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 99, 7, 0, 512))
        assert struct.unpack(">IIQ", _recv(s, 16)) == (SIMPLE_REPLY_MAGIC, errno.EINVAL, 7)
        s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, 8, 0, 512))
        assert struct.unpack(">IIQ", _recv(s, 16)) == (SIMPLE_REPLY_MAGIC, 0, 8)
        assert _recv(s, 512) == served.data[:512]
        # Garbage instead of a request: the server hangs up on this client only.
        s.sendall(b"\xde\xad\xbe\xef" * 7)
        assert s.recv(1) == b""
    with open_nbd(server.uri) as disk:
        assert disk.read(0, 512) == served.data[:512]


def test_structured_wire_format(server: NbdExportServer, served: Served) -> None:
    """Hole chunks for zero ranges, block status from the map, as the bytes on the wire."""
    with _raw_client(server.socket_path) as s:
        assert _option(s, OPT_STRUCTURED_REPLY) == [(REP_ACK, b"")]
        query = struct.pack(">II", 0, 1) + struct.pack(">I", 15) + b"base:allocation"
        replies = _option(s, OPT_SET_META_CONTEXT, query)
        assert replies == [(REP_META_CONTEXT, struct.pack(">I", 1) + b"base:allocation"), (REP_ACK, b"")]
        assert _option(s, OPT_GO, struct.pack(">IH", 0, 0))[-1][0] == REP_ACK
        # The first data region is [0, 64 KiB), then a hole: read across the edge.
        s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 61440, 12288))
        magic, flags, kind, handle, length = struct.unpack(">IHHQI", _recv(s, 20))
        assert (magic, flags, kind, handle, length) == (STRUCTURED_REPLY_MAGIC, 0, 1, 1, 8 + 4096)
        payload = _recv(s, length)
        assert payload == struct.pack(">Q", 61440) + served.data[61440:65536]
        magic, flags, kind, handle, length = struct.unpack(">IHHQI", _recv(s, 20))
        assert (flags, kind, handle, length) == (REPLY_FLAG_DONE, 2, 1, 12)
        assert _recv(s, 12) == struct.pack(">QI", 65536, 8192)
        # Block status of the same range: one data and one hole|zero descriptor.
        s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_BLOCK_STATUS, 2, 61440, 12288))
        magic, flags, kind, handle, length = struct.unpack(">IHHQI", _recv(s, 20))
        assert (flags, kind, handle, length) == (REPLY_FLAG_DONE, 5, 2, 20)
        assert _recv(s, 20) == struct.pack(">IIIII", 1, 4096, 0, 8192, 3)


# -- lifecycle --------------------------------------------------------------------------------


def test_stop_with_clients_connected_and_stale_sockets(served: Served, sockdir: Path) -> None:
    path = sockdir / "life.sock"
    reader = PointReader(served.repo, served.point, 0)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file left by a killed server: nobody listens
    stale.close()
    server = NbdExportServer(reader, path).start()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DiskError, match="another server is listening"):
        NbdExportServer(reader, path).start()
    disk = open_nbd(server.uri)
    deadline = time.monotonic() + 10  # the refused server's probe closes on the server's own time
    while server.connections != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connections == 1
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5
    assert not path.exists() and server.connections == 0
    with pytest.raises(DiskError):
        disk.read(0, 512)
    disk.close()
    server.stop()  # twice is fine
    (sockdir / "file").write_text("not a socket")
    with pytest.raises(DiskError, match="not a socket"):
        NbdExportServer(reader, sockdir / "file").start()


_CHILD = """
import sys
from rehost.disks.nbd_serve import serve_forever
from rehost.repository.point_reader import PointReader
from rehost.repository.repository import Repository
from rehost.repository.storage import LocalStorage

repo = Repository.open(LocalStorage(sys.argv[1]))
point = repo.load_point_exact(sys.argv[2])
server = serve_forever(PointReader(repo, point, 0), sys.argv[3],
                       ready=lambda s: print("ready", flush=True))
print("served", server.requests, flush=True)
"""


def test_serve_forever_in_a_daemon_process(served: Served, sockdir: Path) -> None:
    path = sockdir / "daemon.sock"
    root = str(served.storage.location).removeprefix("local:")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, root, served.point.id, str(path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with open_nbd(path) as disk:
            assert disk.read(17 * MiB, 4096) == served.data[17 * MiB : 17 * MiB + 4096]
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out.startswith("served ") and int(out.split()[1]) >= 2
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
