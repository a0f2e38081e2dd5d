"""Source ``qemu`` against a real QEMU 7.2 under TCG: discovery, dirty-bitmap delta cycles,
fleecing, restarts, interrupted cycles, clean-up, guest freeze and shutdown.

"Guest writes" come from the monitor (HMP ``qemu-io DEVICE "write -P ..."``): they go through
the block layer like a guest's, so dirty bitmaps and copy-before-write see them. Most VMs are
started paused (``-S``): nothing to boot, so each test takes a second or two; the tests that
need a real guest (agent freeze, ACPI power-off) boot the tiny Linux and are marked slow.
rehost gets a QMP socket of its own (QEMU serves one client per QMP socket; the test keeps
the VM's main one).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rehost.disks.extent import Extent
from rehost.errors import UsageError
from rehost.guest.agent import GuestAgent
from rehost.replication.cycle import CycleResult, run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import MemoryStorage
from rehost.sources.base import Snapshot
from rehost.sources.qemu import QemuSource
from rehost.sources.qemu_cbt import Bitmap, DiskPlan, machine_tag, plan_disk, union_extents
from rehost.sources.qemu_qmp import QemuDisk, discover
from rehost.spec import DiskSpec, MachineSpec
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import READY_LINE, set_mode

pytestmark = pytest.mark.usefixtures("need_qemu")

KiB = 1 << 10
MiB = 1 << 20
SIZE = 64 * MiB


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for rehost's QMP socket (UNIX socket paths: 107 bytes max)."""
    d = Path(tempfile.mkdtemp(prefix="rehost-t-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def image(tmp_path: Path, name: str, size: int = SIZE, fmt: str = "qcow2") -> Path:
    path = tmp_path / f"{name}.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)], check=True)
    return path


class PausedVM(QemuVM):
    """QemuVM whose ``with`` block ends with ``quit`` at once: our guests mostly run nothing,
    so the ACPI power-off QemuVM tries first would only cost its 10 s timeout."""

    def __exit__(self, *exc: object) -> None:
        self.stop(graceful_timeout=0)


def start_vm(disks: Sequence[tuple[Path, str]], rehost_qmp: Path, *, paused: bool = True,
             extra: Sequence[str] = (), **kw: Any) -> PausedVM:
    """A VM (paused unless asked) with drives ``drive0..`` and a second QMP socket for rehost."""
    args = ["-qmp", f"unix:{rehost_qmp},server=on,wait=off", *extra]
    vm = PausedVM([Drive(p, fmt) for p, fmt in disks], extra_args=[*(["-S"] if paused else []), *args], **kw)
    vm.start()
    vm.qmp("query-status")  # QEMU is up, both monitors listen
    return vm


def write(vm: QemuVM, device: str, pattern: int, offset: int, length: int) -> None:
    """A "guest write" through the block layer (qemu-io reports on QEMU's stdout; the
    monitor answers only errors)."""
    out = vm.qmp("human-monitor-command",
                 **{"command-line": f'qemu-io {device} "write -P {pattern:#x} {offset} {length}"'})
    assert not out.strip(), out


@dataclass
class Replica:
    """One machine replicated by run_cycle into a repository, with a model of its disks
    (what the bytes must be at each instant)."""

    vm_sock: Path
    disks: list[QemuDisk]
    tmp: Path
    granularity: int = 4096
    repo: Repository = field(default_factory=lambda: Repository.create(MemoryStorage()))
    parent: RecoveryPoint | None = None
    model: dict[int, bytearray] = field(default_factory=dict)
    last_notes: list[str] = field(default_factory=list)
    last_snapshot: Snapshot | None = None

    def __post_init__(self) -> None:
        self.machine = MachineSpec(id=uuid.uuid4().hex, name="vm1", disks=tuple(
            DiskSpec(index=d.index, ref=d.ref, format=d.format, size=d.size) for d in self.disks))
        self.cache = DigestCache(self.tmp / "cache")
        self.model = {d.index: bytearray(d.size) for d in self.disks}
        self.source = QemuSource(self.vm_sock, granularity=self.granularity)

    def guest_write(self, vm: QemuVM, index: int, pattern: int, offset: int, length: int) -> None:
        write(vm, f"drive{index}", pattern, offset, length)
        self.model[index][offset:offset + length] = bytes([pattern]) * length

    def cycle(self, during: Callable[[Snapshot], None] | None = None, *, commit: bool = True,
              app_consistent: bool = False, source: QemuSource | None = None) -> CycleResult:
        """One cycle; ``during`` runs after the instant, before anything is read."""
        src = source or self.source
        with src.snapshot(self.machine, self.parent, app_consistent=app_consistent) as snap:
            self.last_snapshot = snap
            expected = {i: bytes(m) for i, m in self.model.items()}
            if during:
                during(snap)
            result = run_cycle(self.repo, self.cache, self.machine.id, snap.disks, parent=self.parent,
                               consistency=snap.consistency, source=snap.metadata, changed=snap.changed)
            if commit and snap.on_commit:
                snap.on_commit(result.point)
        self.last_notes = list(snap.notes)
        for i, data in expected.items():  # the point is the instant of the transaction
            assert self.point_bytes(result.point, i) == data, f"disk {i} differs from its instant"
        if commit:
            self.parent = result.point
        return result

    def point_bytes(self, point: RecoveryPoint, index: int) -> bytes:
        size = next(d.size for d in point.disks if d.index == index)
        return b"".join(d if d is not None else bytes(min(MiB, size - o))
                        for o, d in iter_chunks(self.repo, point, index))

    def assert_equals_live(self, vm: QemuVM, point: RecoveryPoint, index: int, path: Path,
                           fmt: str = "qcow2") -> None:
        """Pause the VM (flushes QEMU's caches to the image) and compare with qemu-img."""
        vm.qmp("stop")
        exported = self.tmp / f"point-{point.short_id}-{index}.raw"
        exported.write_bytes(self.point_bytes(point, index))
        r = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", fmt, str(exported), str(path)],
                           capture_output=True, text=True)
        exported.unlink()
        assert r.returncode == 0, r.stdout + r.stderr

    def resync_model(self, vm: QemuVM, index: int, path: Path, fmt: str = "qcow2") -> None:
        """After QEMU was killed the image may have lost recent writes: take it as it is."""
        vm.qmp("stop")
        raw = self.tmp / "resync.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(raw)], check=True)
        self.model[index][:] = raw.read_bytes()
        raw.unlink()


def has_note(replica: Replica, *words: str) -> bool:
    if any(all(w in n for w in words) for n in replica.last_notes):
        return True
    raise AssertionError(f"no note with {words} in {replica.last_notes}")


def bitmaps(vm: QemuVM) -> dict[str, list[str]]:
    """node -> names of its dirty bitmaps (only nodes that have some)."""
    out = {}
    for n in vm.qmp("query-named-block-nodes", flat=True):
        if n.get("dirty-bitmaps"):
            out[n["node-name"]] = sorted(b["name"] for b in n["dirty-bitmaps"])
    return out


def assert_clean(vm: QemuVM, replica: Replica) -> None:
    """No export, job or fleece node left; each disk has exactly the current bitmap."""
    assert vm.qmp("query-block-exports") == []
    assert vm.qmp("query-block-jobs") == []
    nodes = [n["node-name"] for n in vm.qmp("query-named-block-nodes", flat=True)]
    assert not [n for n in nodes if n.startswith("rehost-")]
    assert replica.parent is not None
    current = replica.parent.source["bitmaps"]
    assert sorted(b for names in bitmaps(vm).values() for b in names) == sorted(current.values())
    # the NBD server is stopped: starting one must work
    probe = Path(tempfile.mkdtemp(prefix="rehost-p-", dir="/tmp")) / "s"
    vm.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(probe)}})
    vm.qmp("nbd-server-stop")
    shutil.rmtree(probe.parent, ignore_errors=True)
    assert not list(Path("/tmp").glob(f"rehost-qemu-*/rehost-{machine_tag(replica.machine.id)}-*"))


# --------------------------------------------------------------------------------------------
# (a) discovery


def test_discover_finds_writable_disks_with_stable_refs(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0")
    d1 = image(tmp_path, "d1", 32 * MiB)
    ro = image(tmp_path, "ro", 16 * MiB, "raw")
    v2 = image(tmp_path, "old", 8 * MiB)
    subprocess.run(["qemu-img", "amend", "-q", "-o", "compat=0.10", str(v2)], check=True)
    sock = sockdir / "qmp.sock"
    extra = [
        "-drive", f"file={ro},format=raw,if=virtio,readonly=on,id=rodisk",
        "-drive", "if=ide,media=cdrom,id=cd0",
        "-blockdev", f"driver=file,filename={d1},node-name=d1file",
        "-blockdev", "driver=qcow2,file=d1file,node-name=data1",
        "-device", "virtio-blk-pci,drive=data1,id=vdb",
        "-drive", f"file={v2},format=qcow2,if=none,id=v2drive",
        "-device", "virtio-blk-pci,drive=v2drive,id=vdc",
    ]
    vm = start_vm([(d0, "qcow2")], sock, extra=extra)
    with vm:
        disks = discover(sock)
        # QEMU's order: -drive drives, then -blockdev devices (the same at every start)
        assert [(d.index, d.ref, d.size, d.format) for d in disks] == [
            (0, "drive0", SIZE, "qcow2"), (1, "v2drive", 8 * MiB, "qcow2"), (2, "vdb", 32 * MiB, "qcow2")]
        assert [d.bitmaps_persist for d in disks] == [True, False, True]  # qcow2 v2 cannot persist
        assert disks[0].node_name.startswith("#block")  # automatic: changes at every start
        assert disks[2].node_name == "data1" and disks[2].qdev.startswith("/machine/peripheral/vdb")
        assert disks[2].matches("data1") and disks[2].matches("vdb")
        assert disks[0].filename == str(d0)
        assert vm.qmp("query-status")["status"] == "prelaunch"  # untouched


def test_discover_rejects_what_is_not_qmp(tmp_path: Path, sockdir: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        discover(sockdir / "missing.sock")
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(UsageError, match="not a UNIX socket"):
        discover(plain)
    chatty = sockdir / "chatty.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(chatty))
    server.listen(1)

    def talk() -> None:
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        time.sleep(0.5)
        conn.close()

    t = threading.Thread(target=talk, daemon=True)
    t.start()
    with pytest.raises(UsageError, match="not a QMP monitor"):
        discover(chatty)
    t.join()
    server.close()


def test_storage_daemon_disks_and_a_cycle(tmp_path: Path, sockdir: Path) -> None:
    """qemu-storage-daemon: no guest devices; its writable root nodes are the disks.
    The "guest" writes through a FUSE export of the disk."""
    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip("qemu-storage-daemon is not installed")
    d0 = image(tmp_path, "d0", 16 * MiB)
    ro = image(tmp_path, "ro", 1 * MiB, "raw")
    fuse = tmp_path / "fuse.img"
    fuse.touch()
    sock = sockdir / "qsd.sock"
    qsd = subprocess.Popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,filename={d0},node-name=f0",
        "--blockdev", "driver=qcow2,file=f0,node-name=disk0",
        "--blockdev", f"driver=file,filename={ro},node-name=rofile,read-only=on",
        "--export", f"type=fuse,id=fx,node-name=disk0,mountpoint={fuse},writable=on",
        "--chardev", f"socket,path={sock},server=on,wait=off,id=m0", "--monitor", "chardev=m0",
    ], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if qsd.poll() is not None:
            err = qsd.stderr.read() if qsd.stderr else b""
            pytest.skip(f"qemu-storage-daemon with a FUSE export failed: {err!r}")
        disks = discover(sock)
        assert [(d.ref, d.node_name, d.size, d.bitmaps_persist) for d in disks] == [
            ("disk0", "disk0", 16 * MiB, True)]
        replica = Replica(sock, disks, tmp_path)
        fd = os.open(fuse, os.O_RDWR)
        try:
            os.pwrite(fd, b"\x11" * MiB, 0)
            os.fsync(fd)
            replica.model[0][0:MiB] = b"\x11" * MiB
            replica.cycle()
            os.pwrite(fd, b"\x22" * 4096, 5 * MiB)
            os.fsync(fd)
            replica.model[0][5 * MiB:5 * MiB + 4096] = b"\x22" * 4096
            second = replica.cycle()
        finally:
            os.close(fd)
        assert second.bytes_read == 4096
        said = QemuSource(sock).can_shutdown(replica.machine)
        assert said == "a qemu-storage-daemon has no guest to shut down"
    finally:
        qsd.terminate()
        qsd.wait(10)


def test_bitmap_rules_without_qemu() -> None:
    """The decisions of plan_disk, on the bitmap lists QEMU reports."""
    def bm(name: str, recording: bool = False, inconsistent: bool = False) -> Bitmap:
        return Bitmap(name, recording, True, 4096, 0, inconsistent)

    tag = "abcd1234"
    parent, left, stale = "rehost-abcd1234-3-aaaaaa", "rehost-abcd1234-4-bbbbbb", "rehost-abcd1234-2-cccccc"
    other = "rehost-ffff0000-4-dddddd"  # another machine's (another vault's): never touched

    def plan(*bitmaps: Bitmap) -> DiskPlan:
        return plan_disk(0, "n", bitmaps, tag=tag, new="rehost-abcd1234-4-eeeeee", parent_bitmap=parent,
                         parent_sequence=3)

    p = plan(bm(parent), bm(left, True), bm(stale), bm(other, True))
    assert p.union == [parent, left] and p.disable == [left] and p.note is None
    p = plan(bm(parent), bm(stale))
    assert p.union is None and p.note and "chain broken" in p.note
    p = plan(bm(parent, inconsistent=True))
    assert p.union is None and p.remove_now == [parent] and p.note and "inconsistent" in p.note
    p = plan(bm(other, True))
    assert p.union is None and p.disable == [] and p.note and "missing" in p.note
    merged = union_extents([[Extent(0, 4096), Extent(8192, 4096)], [Extent(4096, 4096)], []])
    assert merged == [Extent(0, 12288)]


# --------------------------------------------------------------------------------------------
# (b) + (g) initial and delta cycles


def test_initial_then_delta_cycles_read_only_dirty_extents(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0")
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x11, 0, 8 * MiB)
        first = replica.cycle()
        assert first.bytes_read == 8 * MiB and replica.last_snapshot is not None
        assert replica.last_snapshot.changed == {0: None}  # initial: full read
        assert_clean(vm, replica)
        rng = random.Random(1)
        offsets = sorted({rng.randrange(SIZE // 4096) * 4096 for _ in range(40)})
        for n, off in enumerate(offsets):
            replica.guest_write(vm, 0, 0x20 + n, off, 4096)
        second = replica.cycle()
        print(f"\ndelta cycle: read {second.bytes_read} B of a {SIZE} B disk "
              f"({len(offsets)} scattered 4 KiB writes), {second.seconds:.2f}s")
        assert second.digest_source[0] == "cache+dirty-extents"
        assert second.bytes_read == len(offsets) * 4096  # exactly the dirty blocks
        assert second.point.source["dirty_bytes"] == {"0": len(offsets) * 4096}
        assert replica.last_notes == []
        assert_clean(vm, replica)
        third = replica.cycle()  # nothing written: nothing read
        assert third.bytes_read == 0 and third.changed_bytes == 0
        replica.assert_equals_live(vm, third.point, 0, d0)
        assert_clean(vm, replica)


# --------------------------------------------------------------------------------------------
# (c) fleecing: the point is the instant of the transaction


def test_writes_after_the_instant_are_not_in_the_point_but_in_the_next(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0")
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x11, 0, 4 * MiB)

        def overwrite(snap: Snapshot) -> None:
            # after the instant, before reading: the fleece node must keep the old data
            replica.guest_write(vm, 0, 0xAA, 1 * MiB, 64 * KiB)  # overwrites data
            replica.guest_write(vm, 0, 0xBB, 32 * MiB, 4096)  # writes into a hole

        first = replica.cycle(overwrite)  # Replica.cycle checks the point == the instant
        assert replica.point_bytes(first.point, 0)[MiB:MiB + 1] == b"\x11"
        second = replica.cycle()
        assert second.bytes_read == 64 * KiB + 4096
        replica.assert_equals_live(vm, second.point, 0, d0)

        def more(snap: Snapshot) -> None:
            replica.guest_write(vm, 0, 0xCC, 2 * MiB, 4096)

        replica.guest_write(vm, 0, 0xDD, 3 * MiB, 4096)
        vm.qmp("cont")  # also with the guest (SeaBIOS, no OS) running
        third = replica.cycle(more)
        assert third.bytes_read == 4096
        fourth = replica.cycle()
        assert fourth.bytes_read == 4096
        replica.assert_equals_live(vm, fourth.point, 0, d0)


# --------------------------------------------------------------------------------------------
# (d) two disks, one instant


def test_two_disks_in_one_transaction(tmp_path: Path, sockdir: Path) -> None:
    d0, d1 = image(tmp_path, "d0"), image(tmp_path, "d1", 16 * MiB)
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2"), (d1, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x10, 0, MiB)
        replica.guest_write(vm, 1, 0x11, 0, MiB)
        first = replica.cycle()
        assert [d.index for d in first.point.disks] == [0, 1]
        replica.guest_write(vm, 0, 0x20, 4 * MiB, 4096)
        replica.guest_write(vm, 1, 0x21, 8 * MiB, 8192)

        def both(snap: Snapshot) -> None:
            replica.guest_write(vm, 0, 0x30, 0, 4096)
            replica.guest_write(vm, 1, 0x31, 0, 4096)

        second = replica.cycle(both)
        assert second.bytes_read == 4096 + 8192
        assert set(second.point.source["bitmaps"]) == {"0", "1"}
        third = replica.cycle()
        assert third.bytes_read == 2 * 4096
        replica.assert_equals_live(vm, third.point, 0, d0)
        replica.assert_equals_live(vm, third.point, 1, d1)
        assert_clean(vm, replica)


# --------------------------------------------------------------------------------------------
# (e) QEMU restarts: bitmaps persist, vanish or become inconsistent


def test_qemu_restart_and_kill_fall_back_to_hash_diff(tmp_path: Path, sockdir: Path) -> None:
    """qcow2 (persistent bitmaps) + raw (bitmaps cannot persist) on one VM."""
    d0, r1 = image(tmp_path, "d0"), image(tmp_path, "r1", 8 * MiB, "raw")
    disks_spec = [(d0, "qcow2"), (r1, "raw")]
    sock = sockdir / "qmp.sock"
    vm = start_vm(disks_spec, sock)
    replica = Replica(sock, discover(sock), tmp_path)
    assert [d.bitmaps_persist for d in replica.disks] == [True, False]
    replica.guest_write(vm, 0, 0x11, 0, 2 * MiB)
    replica.guest_write(vm, 1, 0x12, 0, 2 * MiB)
    replica.cycle()
    replica.guest_write(vm, 0, 0x21, 4 * MiB, 4096)
    replica.guest_write(vm, 1, 0x22, 4 * MiB, 4096)
    vm.stop(graceful_timeout=0)  # clean quit: the qcow2 keeps its bitmap

    vm = start_vm(disks_spec, sock)
    try:
        second = replica.cycle()
        assert replica.last_snapshot is not None
        assert replica.last_snapshot.changed[0] == [Extent(4 * MiB, 4096)]  # survived the restart
        assert replica.last_snapshot.changed[1] is None
        assert has_note(replica, "disk 1: dirty bitmap", "missing (QEMU restarted?)", "cannot persist",
                        "hash-diff")
        assert second.digest_source == {0: "cache+dirty-extents", 1: "cache"}
        replica.assert_equals_live(vm, second.point, 0, d0)
        replica.assert_equals_live(vm, second.point, 1, r1, "raw")
        # a bitmap created in a run that is killed is gone
        replica.guest_write(vm, 0, 0x31, 5 * MiB, 4096)
        os.kill(vm.pid or 0, signal.SIGKILL)
    finally:
        vm.stop(graceful_timeout=0)

    vm = start_vm(disks_spec, sock)
    try:
        replica.resync_model(vm, 0, d0)  # the killed run may have lost its last write
        third = replica.cycle()
        assert has_note(replica, "disk 0: dirty bitmap", "missing (QEMU restarted?)")
        assert third.digest_source[0] == "cache"  # hash-diffed, and still exact
        replica.assert_equals_live(vm, third.point, 0, d0)
        vm.stop(graceful_timeout=0)  # clean: the bitmap of the third point is stored...
        vm = start_vm(disks_spec, sock)
        replica.guest_write(vm, 0, 0x41, 6 * MiB, 4096)
        os.kill(vm.pid or 0, signal.SIGKILL)  # ...and loaded by a run that is killed
    finally:
        vm.stop(graceful_timeout=0)

    vm = start_vm(disks_spec, sock)
    with vm:
        replica.resync_model(vm, 0, d0)
        fourth = replica.cycle()
        assert has_note(replica, "disk 0: dirty bitmap", "inconsistent (QEMU stopped uncleanly?)")
        assert fourth.digest_source[0] == "cache"
        replica.assert_equals_live(vm, fourth.point, 0, d0)
        vm.qmp("cont")
        replica.guest_write(vm, 0, 0x51, 7 * MiB, 4096)
        fifth = replica.cycle()  # tracking is back
        assert fifth.digest_source[0] == "cache+dirty-extents" and replica.last_notes == []
        assert_clean(vm, replica)


# --------------------------------------------------------------------------------------------
# (f) an interrupted cycle: leftover bitmaps are unioned


def test_cycle_interrupted_before_commit_is_unioned_next_time(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0")
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x11, 0, 4 * MiB)
        replica.cycle()
        base = replica.parent
        replica.guest_write(vm, 0, 0x21, 10 * MiB, 4096)  # before the failed instant

        def crash(snap: Snapshot) -> None:
            replica.guest_write(vm, 0, 0x22, 11 * MiB, 4096)  # after it
            raise RuntimeError("rehost dies here")

        with pytest.raises(RuntimeError):
            replica.cycle(crash)
        assert replica.parent is base
        node = replica.disks[0].node_name
        left = bitmaps(vm)[node]
        assert len(left) == 2  # the parent's (disabled) and the failed cycle's (recording)
        # a cycle that read everything but never committed
        replica.cycle(commit=False)
        assert len(bitmaps(vm)[node]) == 3
        replica.guest_write(vm, 0, 0x23, 12 * MiB, 4096)
        result = replica.cycle()
        assert replica.last_snapshot is not None
        assert replica.last_snapshot.changed[0] == [
            Extent(10 * MiB, 4096), Extent(11 * MiB, 4096), Extent(12 * MiB, 4096)]
        assert result.bytes_read == 3 * 4096
        replica.assert_equals_live(vm, result.point, 0, d0)
        assert_clean(vm, replica)


def test_rehost_killed_inside_a_cycle_leaves_nothing_behind(tmp_path: Path, sockdir: Path) -> None:
    """A rehost process killed -9 with exports, a job, fleece nodes and the NBD server up:
    the next cycle removes them, and unions the bitmaps the dead cycle left."""
    d0 = image(tmp_path, "d0")
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x11, 0, 4 * MiB)
        parent = replica.cycle().point
        replica.guest_write(vm, 0, 0x21, 20 * MiB, 4096)
        script = textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from rehost.repository.manifest import RecoveryPoint
            from rehost.sources.qemu import QemuSource
            from rehost.spec import DiskSpec, MachineSpec
            m = MachineSpec(id={replica.machine.id!r}, name="vm1",
                            disks=(DiskSpec(index=0, ref="drive0", format="qcow2", size={SIZE}),))
            parent = RecoveryPoint(machine=m.id, time="", consistency="crash-consistent", parent=None,
                                   sequence=0, disks=[], source={parent.source!r})
            with QemuSource(Path({str(sock)!r})).snapshot(m, parent) as snap:
                print("INSIDE", flush=True)
                time.sleep(60)
        """)  # fmt: skip
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).parents[2])
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "INSIDE"
        assert vm.qmp("query-block-exports") and vm.qmp("query-block-jobs")
        child.kill()
        child.wait()
        replica.guest_write(vm, 0, 0x22, 21 * MiB, 4096)
        result = replica.cycle()
        assert has_note(replica, "removed leftovers of an interrupted cycle")
        assert result.bytes_read == 2 * 4096
        replica.assert_equals_live(vm, result.point, 0, d0)
        assert_clean(vm, replica)


# --------------------------------------------------------------------------------------------
# (g) clean-up when the cycle fails, and an NBD server left running


def test_failed_cycle_cleans_up_and_a_stale_nbd_server_is_replaced(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0")
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        replica.guest_write(vm, 0, 0x11, 0, MiB)
        stale = sockdir / "stale-nbd.sock"
        vm.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(stale)}})
        replica.cycle()
        assert_clean(vm, replica)
        with pytest.raises(ValueError), replica.source.snapshot(replica.machine, replica.parent):
            raise ValueError("the repository went away")
        assert vm.qmp("query-block-exports") == [] and vm.qmp("query-block-jobs") == []
        # someone else's export: we must not take their NBD server away
        vm.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(stale)}})
        vm.qmp("block-export-add", type="nbd", id="backup-tool", **{"node-name": replica.disks[0].node_name},
               writable=False)
        with pytest.raises(UsageError, match="NBD server is in use by exports backup-tool"):
            replica.cycle()
        assert [e["id"] for e in vm.qmp("query-block-exports")] == ["backup-tool"]


# --------------------------------------------------------------------------------------------
# app-consistent points


def test_failed_freeze_gives_a_crash_consistent_point_with_a_note(tmp_path: Path, sockdir: Path) -> None:
    """A real agent socket with no agent behind it (the guest is not running)."""
    d0 = image(tmp_path, "d0", 8 * MiB)
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock, guest_agent=True) as vm:
        replica = Replica(sock, discover(sock), tmp_path)
        src = QemuSource(sock, guest_agent=QuickAgent(GuestAgent(vm.guest_agent_socket, timeout=1)))
        result = replica.cycle(app_consistent=True, source=src)
        assert result.point.consistency == Consistency.CRASH
        assert has_note(replica, "guest freeze failed", "crash-consistent")
        replica.cycle(app_consistent=True)  # no agent configured at all
        assert replica.parent is not None and replica.parent.consistency == Consistency.CRASH
        assert "no guest agent configured for this source: crash-consistent" in replica.last_notes


@dataclass
class QuickAgent:
    """The real agent client with 1 s timeouts (its freeze waits at least 60 s by default,
    and a failed freeze is followed by two thaws)."""

    agent: GuestAgent

    def ping(self) -> None:
        self.agent.ping(timeout=1)

    def freeze(self) -> int:
        return self.agent.freeze(timeout=1)

    def thaw(self) -> int:
        return self.agent.thaw(timeout=1)


@pytest.mark.slow
def test_app_consistent_point_with_the_guest_agent(tiny_image: Path, tmp_path: Path, sockdir: Path) -> None:
    set_mode(tiny_image, "stay")
    sock = sockdir / "qmp.sock"
    vm = start_vm([(tiny_image, "raw")], sock, paused=False, guest_agent=True)
    with vm:
        vm.wait_for(READY_LINE, 120)
        agent = GuestAgent(vm.guest_agent_socket, timeout=10)
        replica = Replica(sock, discover(sock), tmp_path)
        replica.source = QemuSource(sock, guest_agent=agent)
        replica.model[0][:] = tiny_image.read_bytes()  # nothing was written since boot (ro root)...
        vm.send_console("echo app > /mnt/app.txt\n")  # ...until now: the model cannot know
        time.sleep(1)
        with replica.source.snapshot(replica.machine, None, app_consistent=True) as snap:
            result = run_cycle(replica.repo, replica.cache, replica.machine.id, snap.disks, parent=None,
                               consistency=snap.consistency, source=snap.metadata, changed=snap.changed)
            assert snap.on_commit
            snap.on_commit(result.point)
        assert result.point.consistency == Consistency.APP, snap.notes
        assert result.point.source["freeze"]["filesystems"] >= 1
        assert agent.freeze_status() == "thawed"
        print(f"\nguest frozen for {result.point.source['freeze']['seconds']}s around the transaction")


# --------------------------------------------------------------------------------------------
# granularity


@pytest.mark.slow
def test_granularity_cost(tmp_path: Path, sockdir: Path) -> None:
    """Bytes read per delta cycle after N scattered 4 KiB writes, per bitmap granularity."""
    size, n = 256 * MiB, 500
    rows = []
    for g in (4096, 16384, 65536):
        d0 = image(tmp_path, f"g{g}", size)
        sock = sockdir / f"g{g}.sock"
        with start_vm([(d0, "qcow2")], sock) as vm:
            replica = Replica(sock, discover(sock), tmp_path, granularity=g)
            replica.guest_write(vm, 0, 0x11, 0, size)  # a full disk: every granule is data
            replica.cycle()
            rng = random.Random(7)
            offsets = {rng.randrange(size // 4096) * 4096 for _ in range(n)}
            for i, off in enumerate(sorted(offsets)):
                replica.guest_write(vm, 0, 0x80 + i % 100, off, 4096)
            delta = replica.cycle()
            granules = {off // g for off in offsets}
            assert delta.bytes_read == len(granules) * g
            assert delta.changed_bytes == len(offsets) * 4096
            rows.append((g, len(offsets), delta.bytes_read, delta.seconds, size // g // 8))
    print(f"\n{'granularity':>11} {'writes':>6} {'bytes read':>12} {'x written':>9} {'cycle s':>7} "
          f"{'bitmap/TiB':>10}")
    for g, writes, read, secs, mem in rows:
        print(f"{g:>11} {writes:>6} {read:>12} {read / (writes * 4096):>9.1f} {secs:>7.2f} "
              f"{(mem * (1 << 40) // size) / MiB:>8.0f} MiB")


# --------------------------------------------------------------------------------------------
# shutdown


def test_shutdown_hard_stop_when_the_guest_ignores_the_power_button(tmp_path: Path, sockdir: Path) -> None:
    d0 = image(tmp_path, "d0", 8 * MiB)
    sock = sockdir / "qmp.sock"
    with start_vm([(d0, "qcow2")], sock, paused=False) as vm:  # SeaBIOS, no OS: no ACPI handler
        src = QemuSource(sock)
        replica = Replica(sock, discover(sock), tmp_path)
        assert src.can_shutdown(replica.machine) is None
        said = src.shutdown(replica.machine, timeout=2)
        assert "did not power off within 2s" in said and "vCPUs were stopped" in said
        assert vm.qmp("query-status")["status"] == "paused"
        replica.guest_write(vm, 0, 0x11, 0, MiB)
        replica.cycle()  # a final sync still works
        assert src.quit_qemu(replica.machine) == "QEMU quit"
        assert vm.wait_exit(10) == 0
        assert src.can_shutdown(replica.machine) is not None
        assert src.quit_qemu(replica.machine) == "QEMU is not running"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["keep-alive", "no-shutdown", "plain"])
def test_shutdown_by_acpi_and_what_a_final_sync_can_do(
    mode: str, tiny_image: Path, tmp_path: Path, sockdir: Path
) -> None:
    set_mode(tiny_image, "stay")
    sock = sockdir / "qmp.sock"
    vm = start_vm([(tiny_image, "raw")], sock, paused=False, no_shutdown=mode == "no-shutdown")
    with vm:
        vm.wait_for(READY_LINE, 120)
        replica = Replica(sock, discover(sock), tmp_path)
        vm.qmp("stop")  # flushes: the image file is the disk
        replica.model[0][:] = tiny_image.read_bytes()
        replica.cycle()
        vm.qmp("cont")
        said = QemuSource(sock).shutdown(replica.machine, timeout=60, keep_alive=mode == "keep-alive")
        print(f"\n{mode}: {said}")
        assert "the guest powered off after" in said
        if mode == "plain":
            assert "QEMU exited" in said and vm.wait_exit(10) == 0
            return
        assert "QEMU stays up" in said
        assert ("set to pause" if mode == "keep-alive" else "-no-shutdown") in said
        assert vm.qmp("query-status")["status"] == "shutdown"
        replica.model[0][:] = tiny_image.read_bytes()  # the guest is off: the file is the disk
        result = replica.cycle()  # the final sync, with the bitmap
        assert result.digest_source[0] == "cache+dirty-extents"
        print(f"final sync read {result.bytes_read} B")
        assert QemuSource(sock).quit_qemu(replica.machine) == "QEMU quit"
        assert vm.wait_exit(10) == 0
