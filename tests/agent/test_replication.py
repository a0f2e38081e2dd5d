"""Replication from an agent: a loop device with a real ext4 file system, read over NBD+TLS;
later cycles read only the blocks the agent reports changed; points equal the device."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.agent.client import AgentError
from rehost.agent.pki import CertificateAuthority
from rehost.agent.service import AgentService
from rehost.agent.tracker import apply_digests, diff, pack_digests, scan
from rehost.agent.tracker import digest_blocks as agent_digests
from rehost.disks.extent import Extent
from rehost.replication.cycle import CycleResult, Resume, run_cycle
from rehost.replication.digests import DigestCache, digest_blocks
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import LocalStorage
from rehost.sources.physical import PhysicalSource
from rehost.spec import MachineSpec

from .conftest import Registrar, run_cmd

MiB = 1 << 20
SIZE = 64 * MiB


def test_agent_digests_match_the_server_s(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 100)
    assert agent_digests(data) == digest_blocks(data)
    f = tmp_path / "d"
    f.write_bytes(data)
    s = scan(f)
    assert s == digest_blocks(data)
    changed = bytearray(data)
    changed[5000] ^= 1
    f.write_bytes(changed)
    ext = diff(s, scan(f), len(data))
    assert ext == [(4096, 4096)]
    assert apply_digests(s, ext, pack_digests(scan(f), ext)) == scan(f)


def _point_bytes(repo: Repository, point: RecoveryPoint) -> bytes:
    size = point.disks[0].size
    return b"".join(d if d is not None else bytes(min(MiB, size - o)) for o, d in iter_chunks(repo, point, 0))


def _cycle(source: PhysicalSource, repo: Repository, cache: DigestCache, machine: MachineSpec,
           parent: RecoveryPoint | None, app: bool = False) -> CycleResult:
    with source.snapshot(machine, parent, app_consistent=app) as snap:
        result = run_cycle(repo, cache, machine.id, snap.disks, parent=parent, consistency=snap.consistency,
                           source=snap.metadata, changed=snap.changed, taken_at=snap.taken_at,
                           resume=Resume.of(cache, machine.id, parent, snap.expected))
        assert snap.on_commit is not None
        snap.on_commit(result.point)
    result.notes = snap.notes
    return result


def test_replicate_ext4_loop_device(
    ca: CertificateAuthority, registered: Registrar, run_agent: Callable[[Path], AgentService],
    ext4_loop: tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    backing, dev, mnt = ext4_loop
    (mnt / "hello.txt").write_text("first\n")
    subprocess.run(["sync"], check=True)
    agent = run_agent(registered("phys1", [str(dev)]))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    machine = MachineSpec(id="m-phys1", name="phys1")
    source = PhysicalSource(ca, cache)

    first = _cycle(source, repo, cache, machine, None)
    assert first.point.consistency == Consistency.NONE  # a live disk, no snapshot
    assert first.bytes_read > 0
    assert "not crash-consistent" in "; ".join(first.notes)
    assert agent.agent.store.committed_point(0) == first.point.id

    # a new file, then a quiescent file system: the point must equal the device exactly
    payload = os.urandom(300 * 1024)
    (mnt / "data.bin").write_bytes(payload)
    run_cmd(["mount", "-o", "remount,ro", str(mnt)])
    second = _cycle(source, repo, cache, machine, first.point)
    assert second.digest_source[0] == "cache+dirty-extents"
    assert 300 * 1024 <= second.bytes_read < 4 * MiB, second.bytes_read  # only changed extents
    assert _point_bytes(repo, second.point) == backing.read_bytes()
    nothing = _cycle(source, repo, cache, machine, second.point)
    assert nothing.bytes_read == 0 and nothing.changed_bytes == 0

    # frozen file systems: an app-consistent point that holds the new file
    run_cmd(["mount", "-o", "remount,rw", str(mnt)])
    (mnt / "last.txt").write_text("frozen\n")
    third = _cycle(source, repo, cache, machine, nothing.point, app=True)
    assert third.point.consistency == Consistency.APP
    assert agent.agent.freezer.frozen == []  # thawed
    restored = tmp_path / "restored.img"
    restored.write_bytes(_point_bytes(repo, third.point))
    subprocess.run(["e2fsck", "-fn", str(restored)], check=True, capture_output=True)
    assert run_cmd(["debugfs", "-R", "cat /last.txt", str(restored)]) == "frozen\n"
    assert run_cmd(["debugfs", "-R", "cat /hello.txt", str(restored)]) == "first\n"

    # failover: shutdown freezes and holds, the final sync is app-consistent without a freeze
    # of its own, release powers the machine off; an unreachable agent raises (recorded)
    assert "1 file system(s) frozen" in source.shutdown(machine, 30)
    assert agent.agent.freezer.frozen == [str(mnt)]
    with pytest.raises(RuntimeError), source.snapshot(machine, third.point):  # a failed final sync
        raise RuntimeError("the final sync broke")
    assert agent.agent.freezer.frozen == []  # thawed at once, not by the watchdog 15 min later
    assert "1 file system(s) frozen" in source.shutdown(machine, 30)  # the job's retry holds again
    final = _cycle(source, repo, cache, machine, third.point)
    assert final.point.consistency == Consistency.APP
    assert "held frozen" in "; ".join(final.notes)
    assert agent.agent.freezer.frozen == [str(mnt)]  # still held until release
    assert "powering the machine off" in (source.release(machine) or "")
    deadline = time.monotonic() + 10
    while not (agent.state / "off").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (agent.state / "off").exists() and agent.agent.freezer.frozen == []
    agent.close()
    with pytest.raises(AgentError, match="unreachable"):
        source.shutdown(machine, 5)
    assert "could not" in (source.release(machine) or "")


def test_cut_cycle_commits_nothing(
    ca: CertificateAuthority, registered: Registrar, run_agent: Callable[[Path], AgentService],
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(4 * MiB))
    agent = run_agent(registered("phys2", [str(disk)]))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    machine = MachineSpec(id="m-phys2", name="phys2")
    source = PhysicalSource(ca, cache)
    first = _cycle(source, repo, cache, machine, None)
    with open(disk, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(8192))
    # the data connection dies in the middle of the cycle: no point, the agent keeps its baseline
    with pytest.raises(Exception), source.snapshot(machine, first.point) as snap:  # noqa: B017
        assert agent.exports is not None
        agent.exports.stop()
        run_cycle(repo, cache, machine.id, snap.disks, parent=first.point, changed=snap.changed)
    assert [p.id for p in repo.list_points(machine.id)] == [first.point.id]
    assert agent.agent.store.committed_point(0) == first.point.id
    assert agent.exports is not None
    agent.exports.start()
    second = _cycle(source, repo, cache, machine, first.point)
    assert second.bytes_read == 8192
    assert _point_bytes(repo, second.point) == disk.read_bytes()


class _CutAfter:
    """A disk whose link dies (the agent's NBD exports stop) after ``limit`` bytes were read."""

    def __init__(self, disk: ReadableDisk, limit: int, cut: Callable[[], None]) -> None:
        self.disk, self.limit, self.cut, self.read = disk, limit, cut, 0

    @property
    def size(self) -> int:
        return self.disk.size

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        return self.disk.extents(start, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        if self.read >= self.limit:
            self.cut()
        n = self.disk.readinto(offset, buf)
        self.read += n
        return n


@pytest.mark.parametrize("initial", [True, False], ids=["initial-copy", "delta"])
def test_cut_cycle_resumes_without_sending_again(
    ca: CertificateAuthority, registered: Registrar, run_agent: Callable[[Path], AgentService],
    tmp_path: Path, initial: bool,
) -> None:
    """The link dies 40 MiB into a 64 MiB transfer: no point; the retry takes what was already
    stored (two 16 MiB packs at least) from the journal and reads only the rest; exact point."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(64 * MiB if initial else 96 * MiB))
    agent = run_agent(registered("phys3", [str(disk)]))
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")
    machine = MachineSpec(id="m-phys3", name="phys3")
    source = PhysicalSource(ca, cache)
    parent = None
    if not initial:
        parent = _cycle(source, repo, cache, machine, None).point
        with open(disk, "r+b") as f:
            for off in range(0, 96 * MiB, 3 * MiB // 2):  # 64 MiB changed, in 1 MiB runs
                f.seek(off)
                f.write(os.urandom(MiB))
    assert agent.exports is not None
    exports = agent.exports
    with pytest.raises(Exception), source.snapshot(machine, parent) as snap:  # noqa: B017
        index, nbd_disk = snap.disks[0]
        cut = _CutAfter(nbd_disk, 40 * MiB, exports.stop)
        run_cycle(repo, cache, machine.id, [(index, cut)], parent=parent, changed=snap.changed,
                  resume=Resume.of(cache, machine.id, parent, snap.expected))
    assert [p.id for p in repo.list_points(machine.id)] == ([parent.id] if parent else [])
    exports.start()
    retry = _cycle(source, repo, cache, machine, parent)
    assert retry.resumed_bytes >= 32 * MiB, retry.resumed_bytes  # what was read before the cut
    assert retry.bytes_read + retry.resumed_bytes == 64 * MiB, (retry.bytes_read, retry.resumed_bytes)
    assert _point_bytes(repo, retry.point) == disk.read_bytes()
    assert not (tmp_path / "cache" / machine.id / "resume.jsonl").exists()  # dropped at commit
    # and the next cycle from the new point has nothing to resume: a plain delta
    with open(disk, "r+b") as f:
        f.write(os.urandom(4096))
    nxt = _cycle(source, repo, cache, machine, retry.point)
    assert nxt.resumed_bytes == 0 and nxt.bytes_read == 4096
    assert _point_bytes(repo, nxt.point) == disk.read_bytes()


def test_scan_reads_in_parallel_and_matches_the_server_s_digests(tmp_path: Path) -> None:
    """Holes, data, a short last block, and more reads than threads: the parallel scan gives
    exactly the digests of the whole file read in one go."""
    f = tmp_path / "sparse.raw"
    size = 9 * MiB + 1000
    with open(f, "wb") as out:
        out.truncate(size)
        for off in (0, 3 * MiB + 4096, 7 * MiB - 100, size - 3000):
            out.seek(off)
            out.write(os.urandom(min(2 * MiB, size - off)))
    assert scan(f) == digest_blocks(f.read_bytes())


def test_diff_finds_every_changed_run_whatever_the_stride() -> None:
    """Against a block-by-block reference: runs across the 512-digest stride, at the ends,
    a short last block."""
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randrange(1, 3000)
        old = bytearray(os.urandom(8 * n))
        new = bytearray(old)
        for _ in range(rng.randrange(0, 12)):
            i = rng.randrange(n)
            for j in range(i, min(n, i + rng.randrange(1, 700))):
                new[j * 8] ^= 1
        size = n * 4096 - rng.randrange(0, 4096)
        changed = [i for i in range(n) if new[i * 8 : i * 8 + 8] != old[i * 8 : i * 8 + 8]]
        got = diff(bytes(old), bytes(new), size)
        blocks = [b for start, length in got for b in range(start // 4096, -(-(start + length) // 4096))]
        assert blocks == changed
        assert all(start + length <= size for start, length in got)
