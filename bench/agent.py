#!/usr/bin/env python3
"""Benchmark (not a test): replication from the rehost agent over loopback against an rsync daemon.

One raw disk file of mixed data (random, text-like, zeros) is the "physical server's" disk.
rehost: the agent (``python -m rehost.agent run``, after ``register``) serves it over
NBD+TLS and its mTLS HTTPS API on 127.0.0.1; this process is the replication server: it runs
``PhysicalSource`` + ``run_cycle`` into a fresh repository. rsync: ``rsync --daemon`` exports the
same file and an rsync client pulls it into a mirror. Both copy the disk once, then again
after 1 % of it is rewritten in scattered 1 MiB regions, then again after scattered 4 KiB
writes (0.1 % by default: each costs rehost one NBD round trip). A probe then times small
and whole-disk NBD+TLS reads against the agent's qemu-nbd and against the same qemu-nbd on a
TCP_NODELAY listener. The run prints markdown tables and the rehost / rsync ratios, writes
them to ``bench/out/agent-<date>.md`` and checks that both copies equal the disk.

    .venv/bin/python bench/agent.py [--size 1GiB] [--workdir DIR] [--keep]

Run as root: the whole benchmark runs in a private network namespace (its own loopback), so
the loopback byte counters see only its traffic and its ports collide with nobody's.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import platform
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from harness import GiB, MiB, machine, run, wait_for_idle

from rehost.agent.client import AgentClient, AgentError
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.replication.cycle import CycleResult, run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import LocalStorage
from rehost.sources.physical import PhysicalSource, open_tls_nbd
from rehost.vault.models import MachineRow

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path(__file__).resolve().parent / "out"
HOST = "127.0.0.1"
AGENT_PORT, NBD_PORT, RSYNC_PORT = 8743, 10809, 8873
NAME = "bench"
MB = 1_000_000
CLONE_NEWNET = 0x40000000
# The same command for every rsync copy: --inplace --no-whole-file makes the delta algorithm
# run (a local destination would otherwise default to whole-file); --ignore-times because the
# quick check (same size, mtime in the same second) could skip a just-changed file.
RSYNC_CMD = ["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats"]
KINDS = (("random", 0.40), ("text", 0.35), ("zeros", 0.25))  # share of the disk's 1 MiB regions


# -- measuring --------------------------------------------------------------------------


def _ticks(fields: Sequence[str]) -> float:
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the machine spent busy since boot (/proc/stat; iowait and idle excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return _ticks([user, nice, system, irq, softirq, steal])


def proc_cpu(pid: int, reaped: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (plus its reaped children if ``reaped``)."""
    try:
        after_comm = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return _ticks(after_comm[11:15] if reaped else after_comm[11:13])  # utime stime [cutime cstime]


def live_children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live children (qemu-nbd)."""
    return proc_cpu(pid) + sum(proc_cpu(c) for c in live_children(pid))


def self_cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children (rsync client)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def loopback_bytes() -> int:
    """Bytes sent on ``lo`` of this process's network namespace (IP packets with headers)."""
    for line in Path("/proc/self/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    return 0


@dataclass
class Row:
    phase: str
    tool: str
    wall: float
    cpu_client: float  # the pulling side: the rehost server process / the rsync client
    cpu_source: float  # the serving side: the agent + qemu-nbd / the rsync daemon
    others: float  # CPU seconds the rest of the machine used meanwhile
    wire: int  # bytes on the loopback
    sync: float  # seconds of a `sync` right after: what the tool left unflushed
    own: dict[str, int] = field(default_factory=dict)  # the tool's own byte counts
    split: dict[str, float] = field(default_factory=dict)  # rehost: where the wall time went

    @property
    def noisy(self) -> bool:
        return self.others > max(0.1 * self.wall * len(os.sched_getaffinity(0)), 0.05)


@contextmanager
def measured(phase: str, tool: str, source_pid: int, idle_wait: float) -> Iterator[Row]:
    """Time the block; the caller fills ``own`` and ``split`` of the yielded row."""
    wait_for_idle(idle_wait)
    os.sync()
    row = Row(phase, tool, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    c0, s0, b0, w0, t0 = self_cpu(), tree_cpu(source_pid), machine_busy(), loopback_bytes(), time.monotonic()
    yield row
    row.wall = time.monotonic() - t0
    time.sleep(0.1)  # let the rsync daemon reap its connection's child
    row.cpu_client, row.cpu_source = self_cpu() - c0, tree_cpu(source_pid) - s0
    row.others = max(machine_busy() - b0 - row.cpu_client - row.cpu_source, 0.0)
    row.wire = loopback_bytes() - w0
    t1 = time.monotonic()
    os.sync()
    row.sync = time.monotonic() - t1


# -- the data ---------------------------------------------------------------------------


def text_pool(rng: random.Random, size: int) -> bytes:
    """Log-like lines of made-up words: compresses about 2.6x with zstd, like real text."""
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(4000)]
    lines, n = [], 0
    while n < size + MiB:
        line = (f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}Z host{rng.randint(1, 40)} {rng.choice(words)}"
                f"[{rng.randint(100, 99999)}]: {' '.join(rng.choices(words, k=rng.randint(4, 16)))}\n")
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def make_disk(path: Path, size: int, seed: int) -> dict[str, int]:
    """Write the disk: each 1 MiB region random, text-like (a 1 MiB slice of an 8 MiB pool at
    a random offset: no two alike) or zeros, in the proportions of KINDS, shuffled. Zeros are
    written, not holes: a block device has no holes. Returns bytes per kind."""
    rng = random.Random(seed)
    regions = size // MiB
    counts = [round(regions * share) for _, share in KINDS[:-1]]
    kinds = [k for (k, _), n in zip(KINDS, [*counts, regions - sum(counts)], strict=True) for _ in range(n)]
    rng.shuffle(kinds)
    pool = text_pool(rng, 8 * MiB)
    zeros = bytes(MiB)
    with open(path, "wb") as f:
        for kind in kinds:
            if kind == "random":
                f.write(rng.randbytes(MiB))
            elif kind == "text":
                start = rng.randrange(len(pool) - MiB)
                f.write(pool[start : start + MiB])
            else:
                f.write(zeros)
        f.flush()
        os.fsync(f.fileno())
    return {k: kinds.count(k) * MiB for k, _ in KINDS}


def scatter(path: Path, fraction: float, write: int, seed: int) -> int:
    """Overwrite ``fraction`` of the disk with random bytes in ``write``-sized pieces at
    distinct random aligned offsets; fsync. Returns the bytes written."""
    size = path.stat().st_size
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(size // write), max(1, round(size * fraction / write))))
    fd = os.open(path, os.O_WRONLY)
    try:
        for o in offsets:
            os.pwrite(fd, rng.randbytes(write), o * write)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(offsets) * write


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256_point(repo: Repository, point: RecoveryPoint) -> str:
    h = hashlib.sha256()
    size = point.disks[0].size
    for offset, data in iter_chunks(repo, point, 0):
        h.update(data if data is not None else bytes(min(MiB, size - offset)))
    return h.hexdigest()


def read_through(path: Path) -> None:
    """Read a file once so that it sits in the page cache (the same start for both tools)."""
    with path.open("rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        while f.readinto(buf):
            pass


# -- the tools --------------------------------------------------------------------------


def private_loopback() -> bool:
    """Move this process (before any thread exists) into a new network namespace with ``lo``
    up: the loopback counters then count only this benchmark. False if that is not possible."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    run(["ip", "link", "set", "lo", "up"])
    return True


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start on port {port}") from None
            time.sleep(0.05)


def snapshot_rehost(work: Path) -> tuple[Path, str]:
    """Copy the rehost package for the agent process (edits made to the tree meanwhile cannot
    reach it); return the copy and a digest of the sources."""
    dest = work / "rehost-src"
    shutil.copytree(REPO_ROOT / "rehost", dest / "rehost", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "rehost").rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return dest, digest.hexdigest()[:16]


class RehostSide:
    """The agent (a subprocess, like on a real server) and the replication server (here)."""

    def __init__(self, work: Path, disk: Path, src: Path) -> None:
        self.work, self.disk = work, disk
        self.ca = CertificateAuthority(work / "vault" / "agents")
        self.state = work / "agent-state"
        agent = [sys.executable, "-m", "rehost.agent", "--state", str(self.state)]
        env = {**os.environ, "PYTHONPATH": str(src)}
        with EnrollmentServer(self.ca, HOST, 0) as enroll:
            run([*agent, "register", "--server", enroll.url, "--passphrase", self.ca.issue_passphrase(NAME),
                 "--fingerprint", self.ca.server_fingerprint, "--disk", str(disk), "--listen", HOST,
                 "--port", str(AGENT_PORT), "--nbd-port", str(NBD_PORT)], env)
        self.log = (work / "agent.log").open("wb")
        self.proc = subprocess.Popen([*agent, "run"], env=env, stdout=self.log, stderr=self.log)
        client = AgentClient(self.ca, NAME, HOST, AGENT_PORT, timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.heartbeat()
                break
            except AgentError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the agent did not start: see {work / 'agent.log'}") from None
                time.sleep(0.1)
        self.repo = Repository.create(LocalStorage.create(work / "repo"))
        self.cache = DigestCache(work / "digest-cache")
        self.machine = MachineRow(id="m-bench", name=NAME)
        self.source = PhysicalSource(self.ca, self.cache, host=HOST, port=AGENT_PORT)
        self.parent: RecoveryPoint | None = None
        self.last: CycleResult | None = None

    def cycle(self, phase: str, idle_wait: float) -> Row:
        with measured(phase, "rehost agent", self.proc.pid, idle_wait) as row:
            t0 = time.monotonic()
            with self.source.snapshot(self.machine, self.parent) as snap:
                t1 = time.monotonic()
                result = run_cycle(self.repo, self.cache, self.machine.id, snap.disks, parent=self.parent,
                                   consistency=snap.consistency, source=snap.metadata, changed=snap.changed,
                                   taken_at=snap.taken_at)
                t2 = time.monotonic()
                assert snap.on_commit is not None
                snap.on_commit(result.point)
            t3 = time.monotonic()
        row.split = {"agent scan + NBD connect": t1 - t0, "run_cycle": t2 - t1, "agent commit": t3 - t2}
        row.own = {"read over NBD": result.bytes_read, "changed": result.changed_bytes,
                   "stored": result.stats.stored_bytes}
        self.parent, self.last = result.point, result
        return row

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RsyncSide:
    """``rsync --daemon`` exporting the disk's folder; the client pulls it into a mirror."""

    def __init__(self, work: Path, disk: Path) -> None:
        self.mirror = work / "rsync-mirror.raw"
        conf = work / "rsyncd.conf"
        conf.write_text(f"use chroot = no\nuid = root\ngid = root\nlog file = {work / 'rsyncd.log'}\n"
                        f"[src]\n    path = {disk.parent}\n    read only = yes\n")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", "--address", HOST,
                                      "--port", str(RSYNC_PORT), "--config", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(RSYNC_PORT, self.proc, "rsync --daemon")
        self.url = f"rsync://{HOST}:{RSYNC_PORT}/src/{disk.name}"

    def copy(self, phase: str, idle_wait: float) -> Row:
        with measured(phase, "rsync daemon", self.proc.pid, idle_wait) as row:
            out = run([*RSYNC_CMD, self.url, self.mirror])
        row.own = {k: stat(out, label) for k, label in (
            ("literal", "Literal data"), ("matched", "Matched data"),
            ("sent", "Total bytes sent"), ("received", "Total bytes received"))}
        return row

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def stat(out: str, label: str) -> int:
    m = re.search(rf"^{label}: ([\d,]+)", out, re.MULTILINE)
    return int(m.group(1).replace(",", "")) if m else -1


def time_reads(port: int, ca: CertificateAuthority, reads: int, size: int) -> tuple[float, float]:
    """Over NBD+TLS: milliseconds per read of ``reads`` random 4 KiB reads, one at a time (as
    a cycle reads scattered changed blocks), and seconds to read the whole disk 8 MiB per call
    (a cycle's read batch)."""
    rng = random.Random(7)
    buf = bytearray(4096)
    with open_tls_nbd(HOST, port, "disk0", str(ca.nbd_client_dir())) as disk:
        disk.readinto(0, buf)  # connection warm
        t0 = time.monotonic()
        for _ in range(reads):
            disk.readinto(rng.randrange(size // 4096) * 4096, buf)
        small = (time.monotonic() - t0) / reads * 1000
        big = memoryview(bytearray(8 * MiB))
        t0 = time.monotonic()
        for offset in range(0, size, len(big)):
            disk.readinto(offset, big[: min(len(big), size - offset)])
        return small, time.monotonic() - t0


def latency_probe(rehost: RehostSide, reads: int) -> list[str]:
    """NBD reads against the agent's own export: one small read at a time shows the round
    trip (44 ms before the agent handed qemu-nbd a TCP_NODELAY listening socket)."""
    size = rehost.disk.stat().st_size
    small, whole = time_reads(NBD_PORT, rehost.ca, reads, size)
    return ["", f"NBD+TLS read probe (the agent's qemu-nbd, --cache=none): {reads} random 4 KiB "
            f"reads one at a time, then the whole {size / MiB:,.0f} MiB disk 8 MiB per call:", "",
            "| export | ms per 4 KiB read | whole disk s | MB/s |", "|---|--:|--:|--:|",
            f"| the agent's qemu-nbd (socket-activated, TCP_NODELAY) | {small:.2f} | {whole:.2f} "
            f"| {mb_s(size, whole)} |"]


# -- the report -------------------------------------------------------------------------


def mb_s(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MB / seconds:,.0f}" if seconds > 0 else "n/a"


def own_text(r: Row) -> str:
    parts = [f"{k} {v / MiB:,.1f} MiB" for k, v in r.own.items()]
    parts += [f"{k} {v:.2f} s" for k, v in r.split.items()]
    return "; ".join(parts)


def table(rows: Sequence[Row], size: int) -> list[str]:
    lines = ["| phase | tool | wall s | disk MB/s | sync after s | CPU s: pulling side | CPU s: source side "
             "| others' CPU s | loopback MiB | own counts |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        flag = " ⚠" if r.noisy else ""
        lines.append(f"| {r.phase} | {r.tool} | {r.wall:.2f}{flag} | {mb_s(size, r.wall)} | {r.sync:.2f} "
                     f"| {r.cpu_client:.1f} | {r.cpu_source:.1f} | {r.others:.1f} | {r.wire / MiB:,.1f} "
                     f"| {own_text(r)} |")
    return lines


def ratios(rows: Sequence[Row]) -> list[str]:
    lines = ["| phase | rehost / rsync wall time | rehost / rsync CPU (both sides) "
             "| rehost / rsync loopback bytes |", "|---|--:|--:|--:|"]
    phases = list(dict.fromkeys(r.phase for r in rows))
    for phase in phases:
        a = next(r for r in rows if r.phase == phase and r.tool.startswith("rehost"))
        b = next(r for r in rows if r.phase == phase and r.tool.startswith("rsync"))
        lines.append(f"| {phase} | {a.wall / b.wall:.2f} | "
                     f"{(a.cpu_client + a.cpu_source) / (b.cpu_client + b.cpu_source):.2f} | "
                     f"{a.wire / max(b.wire, 1):.2f} |")
    return lines


# -- the command ------------------------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    unit = (m.group(2) or "M").upper()[0]
    return int(float(m.group(1)) * {"K": 1 << 10, "M": MiB, "G": GiB}[unit])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size", type=parse_size, default=GiB, help="disk size, e.g. 1GiB, 256MiB (default 1GiB)")
    p.add_argument("--change", type=float, default=0.01, help="share of the disk each delta rewrites (0.01)")
    p.add_argument("--small-change", type=float, default=0.001, help="share of the disk the last delta "
                   "rewrites in scattered 4 KiB writes (0.001; 0 skips that phase)")
    p.add_argument("--probe-reads", type=int, default=100, help="random 4 KiB reads of the latency probe "
                   "(100; 0 skips it)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--idle-wait", type=float, default=20.0, help="before each measured run, wait up to this "
                   "many seconds for the CPUs to be less than 10%% busy (default 20)")
    p.add_argument("--workdir", type=Path, help="empty folder to work in (default: a temp dir in /var/tmp, "
                   "removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temp workdir")
    return p.parse_args(argv)


def versions(digest: str) -> dict[str, str]:
    libs = ", ".join(f"{lib} {version(lib)}" for lib in ("xxhash", "zstandard"))
    return {
        "rehost": f"{version('rehost')}, sources sha256 {digest}… "
                  f"(Python {platform.python_version()}, {libs})",
        "qemu-nbd": run(["qemu-nbd", "--version"]).splitlines()[0],
        "rsync": run(["rsync", "--version"]).splitlines()[0],
    }


def scenario(
    work: Path, args: argparse.Namespace, note: Callable[[str], None]
) -> tuple[list[Row], list[str], list[str]]:
    src, digest = snapshot_rehost(work)
    for k, v in versions(digest).items():
        note(f"- {k}: {v}")
    disk = work / "src" / "disk.raw"
    disk.parent.mkdir()
    t0 = time.monotonic()
    kinds = make_disk(disk, args.size, args.seed)
    note(f"\nData: {args.size / MiB:,.0f} MiB raw disk file, 1 MiB regions shuffled: "
         + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in kinds.items())
         + f" (written in {time.monotonic() - t0:.1f} s, not timed).")
    rows: list[Row] = []
    checks: list[str] = []
    rehost, rsync = RehostSide(work, disk, src), RsyncSide(work, disk)
    try:
        phases = [("initial", 0, 0.0), (f"delta {args.change:.1%} in 1 MiB regions", MiB, args.change),
                  (f"delta {args.small_change:.1%} in 4 KiB writes", 4096, args.small_change)]
        for i, (phase, write, share) in enumerate(phases):
            if write and share > 0:
                n = scatter(disk, share, write, args.seed + i)
                note(f"- {phase}: {n / MiB:.1f} MiB rewritten with random bytes "
                     f"({n // write} × {write // 1024} KiB at distinct random aligned offsets)")
            elif write:
                continue
            for copy in (rehost.cycle, rsync.copy):  # same start for both: the disk in the page cache
                read_through(disk)
                row = copy(phase, args.idle_wait)
                rows.append(row)
                print(f"{phase}: {row.tool} {row.wall:.2f} s", file=sys.stderr)
            want = sha256_file(disk)
            assert rehost.parent is not None
            for label, got in (("rehost point", sha256_point(rehost.repo, rehost.parent)),
                               ("rsync mirror", sha256_file(rsync.mirror))):
                checks.append(f"{phase}: {label} = disk: {'OK' if got == want else 'FAIL'}")
        probe = latency_probe(rehost, args.probe_reads) if args.probe_reads else []
    finally:
        rehost.close()
        rsync.close()
    return rows, checks, probe


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (a private network namespace; rsync daemon as root)")
    isolated = private_loopback()  # first: before any thread exists
    if args.workdir is None:
        work = Path(tempfile.mkdtemp(prefix="rehost-bench-agent-", dir="/var/tmp"))
    else:
        work = args.workdir.absolute()
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            raise SystemExit(f"{work} is not empty")
    command = " ".join([".venv/bin/python bench/agent.py", *(sys.argv[1:] if argv is None else argv)])
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
    lines = [f"## rehost agent → server over loopback vs rsync daemon, {when}"]
    lines += ["", f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in machine(work).items()]
    lines.append("- network: " + ("a private network namespace (its own lo)" if isolated
                                  else "the shared loopback (unshare failed): byte counts include others'"))
    t0 = time.monotonic()
    try:
        rows, checks, probe = scenario(work, args, lines.append)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines += ["", *table(rows, args.size), "", *ratios(rows), ""]
    if any(r.noisy for r in rows):
        lines += ["⚠ other processes used more than 10 % of the CPUs during that run: "
                  "its time is skewed.", ""]
    lines += [f"- {c}" for c in checks]
    lines += probe
    lines += ["", f"Whole run: {time.monotonic() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"agent-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 0 if all(c.endswith("OK") for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
