"""RPO of continuous replication of a running QEMU guest under write churn, and the cost of
one delta cycle with dirty bitmaps (CBT) versus a hash-diff of the same change.

    .venv/bin/python bench/rpo.py [--seconds 60] [--rates 1,5,20] [--disk-mib 1024]

Part 1, per churn rate: a fresh guest and vault; the guest runs ``/bin/rehost-churn RATE``
(1 MiB urandom blocks at random offsets of a FILE_MIB file, fsync'ed); ``rehost serve --tick
0.2`` replicates it under a policy with a crash-consistent point every second; every 0.5 s
this script reads the newest point's time straight from the repository and records its age.
Then serve stops and a few cycles run in this process with timers around their phases.

Part 2: one guest, an initial copy, N MiB of churn, the guest paused; the vault is copied,
so both copies hold the same parent point. The original replicates with its dirty bitmap;
the copy's bitmap is gone after that cycle (rehost keeps only the newest), so it hash-diffs
the very same disk state. The disk image is evicted from the page cache before each cycle.

Needs root (the guest image is built on loop devices) and qemu-system-x86_64. QEMU runs
under TCG (no KVM on the hosts this was written on): the guest is emulated and slow, and the
emulation competes with rehost for the host's CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import MiB, machine

import rehost.sources.qemu as qemu_source
import rehost.vault.protection as protection
from rehost.disks.nbd_disk import NbdDisk
from rehost.guest.agent import GuestAgent
from rehost.replication import reading
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.storage.base import Kind
from rehost.sources.qemu_cbt import FleeceSession
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import build_tiny_linux, mounted_root
from rehost.vault.vault import Vault

REPO = Path(__file__).resolve().parent.parent
REHOST = [str(Path(sys.executable).with_name("rehost"))]
MACHINE = "churny"
SAMPLE_EVERY = 0.5
RPO_GOAL_S = 10.0
GOAL_RATE = 5.0
PROFILED_CYCLES = 4
OTHER = "other (plans, bitmap queries, Python)"
TOTAL = "cycle total"
CHURN_FILE = "/mnt/rehost-churn.dat"


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def cli(vault: Path, *args: str) -> str:
    """``rehost --vault VAULT ARGS``; its stdout. A failure ends the benchmark, loudly."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("REHOST_VAULT", None)
    p = subprocess.run([*REHOST, "--vault", str(vault), *args], capture_output=True, text=True,
                       env=env, cwd=REPO, stdin=subprocess.DEVNULL, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"rehost {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def when(point: RecoveryPoint) -> float:
    return datetime.strptime(point.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --------------------------------------------------------------------------------------------
# the guest


def build_base(work: Path, disk_mib: int, fill_mib: int) -> Path:
    """The tiny Linux image (stay mode) with ``fill_mib`` of random data in a file, as qcow2
    (persistent dirty bitmaps need qcow2 v3): a disk that is partly full, like a real one."""
    raw = work / "base.raw"
    build_tiny_linux(raw, size_mib=disk_mib, marker="rpo-bench", mode="stay")
    with mounted_root(raw) as root, (root / "filler.dat").open("wb") as f:
        for _ in range(fill_mib):
            f.write(os.urandom(MiB))
    qcow2 = work / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


@dataclass
class Guest:
    vm: QemuVM
    disk: Path
    qmp_socket: Path  # rehost's own monitor (QEMU serves one client per QMP socket)
    agent: GuestAgent  # ours: rehost gets no agent, its policy takes no app-consistent points


@contextlib.contextmanager
def boot_guest(work: Path, base: Path, name: str) -> Iterator[Guest]:
    """A copy of ``base`` booted under QEMU; QEMU is always quit and reaped afterwards."""
    disk = work / f"{name}.qcow2"
    shutil.copyfile(base, disk)
    sock = work / f"{name}-qmp.sock"
    vm = QemuVM([Drive(disk, "qcow2")], guest_agent=True, name=f"rpo-{name}",
                extra_args=["-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        vm.start()
        t0 = time.monotonic()
        vm.wait_for(r"REHOST-READY", 240)
        log(f"{name}: guest up in {time.monotonic() - t0:.0f}s")
        agent = vm.guest_agent_client(timeout=20)
        try:
            yield Guest(vm, disk, sock, agent)
        finally:
            agent.close()
    finally:
        vm.stop(graceful_timeout=0)
        disk.unlink(missing_ok=True)


def new_vault(path: Path, guest: Guest, *, policy: bool) -> Path:
    cli(path, "init")
    cli(path, "source", "add-qemu", MACHINE, "--qmp", str(guest.qmp_socket))
    if policy:
        cli(path, "policy", "create", "rpo", "--crash-consistent-every", "1s",
            "--rpo-threshold", "30s", "--retention", "1h")
        cli(path, "policy", "attach", MACHINE, "rpo")
    return path


def replicate_json(vault: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli(vault, "replicate", MACHINE, "--json"))
    return result


# --------------------------------------------------------------------------------------------
# watching points and CPUs


class PointWatch:
    """The machine's points, read from the repository; only new manifests are decoded."""

    def __init__(self, vault: Path) -> None:
        self.vault = Vault.open(vault)
        self.repo = self.vault.repo
        self.points: dict[str, RecoveryPoint] = {}

    def refresh(self) -> list[RecoveryPoint]:
        for obj in self.repo.storage.list(Kind.POINTS):
            if obj.name not in self.points:
                self.points[obj.name] = self.repo.load_point_exact(obj.name)
        return sorted(self.points.values(), key=when)

    def newest(self) -> float | None:
        points = self.refresh()
        return when(points[-1]) if points else None

    def close(self) -> None:
        self.vault.close()


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (iowait excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuShares:
    """Share of ONE CPU each used during a window (2.0 = two CPUs busy)."""

    qemu: float
    serve: float
    others: float
    ncpu: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))


class CpuMeter:
    def __init__(self, qemu_pid: int, serve_pid: int) -> None:
        self.pids = (qemu_pid, serve_pid)
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float, float]:
        return (time.monotonic(), process_cpu(self.pids[0]), process_cpu(self.pids[1]),
                machine_busy(), self_cpu())

    def shares(self) -> CpuShares:
        end = self._read()
        wall, qemu, serve, busy, me = (b - a for a, b in zip(self.start, end, strict=True))
        return CpuShares(qemu / wall, serve / wall, max(busy - qemu - serve - me, 0.0) / wall)


# --------------------------------------------------------------------------------------------
# part 1: RPO under churn


@contextlib.contextmanager
def serving(vault: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``rehost serve --tick 0.2`` with its log in ``log_path``; SIGTERM'ed and reaped after."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("REHOST_VAULT", None)
    with log_path.open("wb") as err:
        proc = subprocess.Popen([*REHOST, "--vault", str(vault), "serve", "--tick", "0.2"], cwd=REPO,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_point_after(watch: PointWatch, t: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (watch.newest() or 0.0) <= t:
        if time.monotonic() > deadline:
            raise SystemExit(f"rehost serve made no point within {timeout:.0f}s")
        time.sleep(0.1)


def sample_ages(watch: PointWatch, seconds: float) -> list[float]:
    """Every SAMPLE_EVERY s for ``seconds``: now - time of the newest point."""
    ages: list[float] = []
    due = time.monotonic()
    end = due + seconds
    while due < end:
        newest = watch.newest()
        if newest is not None:
            ages.append(time.time() - newest)
        due += SAMPLE_EVERY
        time.sleep(max(0.0, due - time.monotonic()))
    return ages


_CYCLE_LINE = re.compile(r"point ([0-9a-f]{12}) \(([\w-]+)\) in ([\d.]+)s, (\d+) changed bytes")


@dataclass
class ServeLog:
    seconds: dict[str, float]  # short point id -> cycle seconds (0.1 s resolution)
    failures: list[str]


def read_serve_log(path: Path) -> ServeLog:
    text = path.read_text(errors="replace")
    seconds = {m[1]: float(m[3]) for m in _CYCLE_LINE.finditer(text)}
    return ServeLog(seconds, [line for line in text.splitlines() if "cycle failed" in line])


@dataclass
class RpoResult:
    rate: float
    initial_s: float
    window_s: float
    ages: list[float]
    points: list[RecoveryPoint]
    cycle_s: list[float]
    failures: list[str]
    cpu: CpuShares
    health: str
    profile: Profile

    @property
    def dirty_mib_s(self) -> float:
        dirty = sum(sum(v or 0 for v in p.source.get("dirty_bytes", {}).values()) for p in self.points)
        return dirty / MiB / self.window_s

    @property
    def interval_s(self) -> float:
        times = [when(p) for p in self.points]
        return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0


def serve_window(vault: Path, guest: Guest, seconds: float, log_path: Path) -> tuple[
        list[float], list[RecoveryPoint], float, CpuShares]:
    """Run serve, wait for its first point, sample point ages for ``seconds``; returns the
    ages, the points made in the window, its length, and who used the CPUs meanwhile."""
    watch = PointWatch(vault)
    try:
        with serving(vault, log_path) as proc:
            wait_for_point_after(watch, time.time(), 120)
            t0, meter = time.time(), CpuMeter(guest.vm.pid or 0, proc.pid)
            ages = sample_ages(watch, seconds)
            t1, cpu = time.time(), meter.shares()
        points = [p for p in watch.refresh() if t0 <= when(p) <= t1]
    finally:
        watch.close()
    return ages, points, t1 - t0, cpu


def rpo_run(work: Path, base: Path, rate: float, args: argparse.Namespace) -> RpoResult:
    tag = f"rate{rate:g}"
    with boot_guest(work, base, tag) as guest:
        vault = new_vault(work / f"vault-{tag}", guest, policy=True)
        t0 = time.monotonic()
        replicate_json(vault)  # the first full copy is not part of the RPO window
        initial = time.monotonic() - t0
        churn = [f"{rate:g}", str(int(args.seconds) + 180), str(args.churn_file_mib), CHURN_FILE]
        pid = guest.agent.exec_start(["/bin/rehost-churn", *churn])
        time.sleep(2)
        log(f"{tag}: initial copy {initial:.1f}s; churn started; serving for {args.seconds:g}s")
        log_path = work / f"serve-{tag}.log"
        ages, points, window, cpu = serve_window(vault, guest, args.seconds, log_path)
        serve_log = read_serve_log(log_path)
        health = json.loads(cli(vault, "machines", "--json"))[0]["health"]
        log(f"{tag}: {len(points)} points; profiling {PROFILED_CYCLES} cycles in-process")
        profile = profile_cycles(vault, PROFILED_CYCLES)
        if guest.agent.exec_status(pid) is not None:
            log(f"{tag}: WARNING: the churn writer ended before the profiled cycles did")
    cycles = [serve_log.seconds[p.short_id] for p in points if p.short_id in serve_log.seconds]
    return RpoResult(rate, initial, window, ages, points, cycles, serve_log.failures, cpu,
                     str(health.get("status")), profile)


# --------------------------------------------------------------------------------------------
# where a cycle's time goes


class PhaseTimer:
    """Adds up the wall time spent in chosen functions, patched while it is active."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[object, str, Any]] = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        totals = self.totals

        @functools.wraps(original)
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                totals[label] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        while self._undo:
            owner, attr, original = self._undo.pop()
            setattr(owner, attr, original)


#: (group, owner, attribute, label). Top-level phases do not nest in each other; the
#: "read+store" rows below run_cycle are parts of it.
PHASES: list[tuple[str, object, str, str]] = [
    ("setup", Repository, "list_points", "find parent (list points)"),
    ("setup", qemu_source, "connect_qmp", "QMP connect"),
    ("setup", FleeceSession, "clean_leftovers", "look for leftovers"),
    ("setup", qemu_source.QemuSource, "_resolve", "query disks"),
    ("setup", FleeceSession, "start_server", "NBD server start"),
    ("setup", FleeceSession, "prepare", "fleece overlay (qemu-img create, blockdev-add)"),
    ("setup", qemu_source.QemuSource, "_instant", "QMP transaction (bitmap, backup job)"),
    ("setup", qemu_source, "open_nbd", "NBD connect"),
    ("setup", NbdDisk, "dirty_extents", "read dirty bitmap (NBD block status)"),
    ("read+store", protection, "run_cycle", "run_cycle total"),
    ("  in run_cycle", Repository, "load_index", "load index"),
    ("  in run_cycle", reading.ExtentMap, "__init__", "allocation map (NBD block status)"),
    ("  in run_cycle", NbdDisk, "readinto", "read changed data (NBD)"),
    ("  in run_cycle", Repository, "save_point", "commit (packs, index, manifest)"),
    ("  in run_cycle", DigestCache, "save", "digest cache save"),
    ("teardown", FleeceSession, "teardown", "remove export, job, overlay, NBD server"),
    ("teardown", qemu_source.QemuSource, "_drop_old", "drop old bitmaps"),
    ("teardown", protection, "set_state", "item state update (SQLite)"),
]


@dataclass
class Profile:
    phases: dict[str, float]  # label -> mean seconds per cycle
    points: int  # in the vault after the profiled cycles
    index_files: int


def profile_cycles(vault_path: Path, n: int) -> Profile:
    """Mean seconds per phase over ``n`` cycles run here (one per second at most, as serve
    does with a 1 s policy); 'other' is the cycle time no listed phase covers."""
    timer = PhaseTimer()
    vault = Vault.open(vault_path)
    total = 0.0
    try:
        for _group, owner, attr, label in PHASES:
            timer.wrap(owner, attr, label)
        for _ in range(n):
            t0 = time.perf_counter()
            protection.replicate(vault, MACHINE)
            total += time.perf_counter() - t0
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
    finally:
        timer.restore()
    try:
        counts = [sum(1 for _ in vault.repo.storage.list(k)) for k in (Kind.POINTS, Kind.INDEX)]
    finally:
        vault.close()
    means = {label: timer.totals[label] / n for *_, label in PHASES}
    top = sum(means[label] for group, *_, label in PHASES if not group.startswith(" "))
    means |= {OTHER: total / n - top, TOTAL: total / n}
    return Profile(means, *counts)


# --------------------------------------------------------------------------------------------
# part 2: one delta, CBT vs hash-diff


def evict(path: Path) -> int:
    """Drop the image's clean pages from the page cache; the bytes still cached after."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else -1


def proc_io(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


@dataclass
class DeltaRow:
    method: str
    wall_s: float
    result: dict[str, Any]
    qemu_rchar: int
    qemu_disk_read: int
    cached_before: int


def measured_cycle(method: str, vault: Path, guest: Guest) -> DeltaRow:
    cached = evict(guest.disk)
    pid = guest.vm.pid or 0
    io0, t0 = proc_io(pid), time.monotonic()
    result = replicate_json(vault)
    wall, io1 = time.monotonic() - t0, proc_io(pid)
    log(f"delta: {method}: {wall:.1f}s, read {result['bytes_read'] / MiB:.1f} MiB, {result['digests']}")
    return DeltaRow(method, wall, result, io1["rchar"] - io0["rchar"],
                    io1["read_bytes"] - io0["read_bytes"], cached)


def churn_once(agent: GuestAgent, mib: int, file_mib: int) -> str:
    """About ``mib`` MiB of churn at 16 MiB/s; the writer's own report."""
    secs = max(1, round(mib / 16))
    r = agent.exec(["/bin/rehost-churn", "16", str(secs), str(file_mib), CHURN_FILE], timeout=secs + 120)
    if r.exitcode != 0:
        raise SystemExit(f"rehost-churn failed: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace").strip()


@dataclass
class DeltaResult:
    churn: str
    disk_size: int
    allocated: int
    rows: list[DeltaRow]


def delta_run(work: Path, base: Path, args: argparse.Namespace) -> DeltaResult:
    with boot_guest(work, base, "delta") as guest:
        cbt = new_vault(work / "vault-delta-cbt", guest, policy=False)
        replicate_json(cbt)
        churn = churn_once(guest.agent, args.delta_mib, args.churn_file_mib)
        guest.vm.qmp("stop")  # the disk state both cycles read
        hashdiff = work / "vault-delta-hash"
        shutil.copytree(cbt, hashdiff, symlinks=True)
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output", "json", str(guest.disk)],
                                         capture_output=True, text=True, check=True).stdout)
        rows = [measured_cycle("dirty bitmap (CBT)", cbt, guest),
                measured_cycle("hash-diff", hashdiff, guest)]
    return DeltaResult(churn, int(info["virtual-size"]), int(info["actual-size"]), rows)


# --------------------------------------------------------------------------------------------
# report


def environment() -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        info = machine(Path(d))
    info.pop("workdir", None)
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    info["qemu"] = qemu.splitlines()[0] + " — TCG (emulation, no KVM): the guest's CPU is emulated"
    info["python"] = platform.python_version()
    return [f"- {k}: {v}" for k, v in info.items()]


def rpo_table(results: Sequence[RpoResult]) -> list[str]:
    rows = ["| churn asked MiB/s | dirtied (CBT) MiB/s | points | point every s | mean cycle s | "
            "age median s | age p95 s | age max s | failed cycles | CPU: QEMU / serve / others | health |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in results:
        cyc = f"{statistics.mean(r.cycle_s):.2f}" if r.cycle_s else "n/a"
        c = r.cpu
        rows.append(
            f"| {r.rate:g} | {r.dirty_mib_s:.1f} | {len(r.points)} | {r.interval_s:.2f} | {cyc} | "
            f"{statistics.median(r.ages):.2f} | {pct(r.ages, 95):.2f} | {max(r.ages):.2f} | "
            f"{len(r.failures)} | {c.qemu:.2f} / {c.serve:.2f} / {c.others:.2f} of {c.ncpu} | {r.health} |")
    return rows


def phase_table(results: Sequence[RpoResult]) -> list[str]:
    head = " | ".join(f"{r.rate:g} MiB/s" for r in results)
    rows = [f"| group | phase (mean ms per cycle) | {head} |", "|---|---|" + "--:|" * len(results)]
    labels = [(g, label) for g, *_, label in PHASES] + [("setup", OTHER), ("", TOTAL)]
    for group, label in labels:
        vals = " | ".join(f"{r.profile.phases.get(label, 0.0) * 1000:.0f}" for r in results)
        rows.append(f"| {group.strip()} | {'↳ ' if group.startswith(' ') else ''}{label} | {vals} |")
    for what in ("points", "index_files"):
        vals = " | ".join(str(getattr(r.profile, what)) for r in results)
        rows.append(f"| vault | {what.replace('_', ' ')} after these cycles | {vals} |")
    return rows


def delta_table(d: DeltaResult) -> list[str]:
    rows = [f"Disk: {d.disk_size / MiB:.0f} MiB virtual, qcow2 file {d.allocated / MiB:.0f} MiB. "
            f"Churn before the cycle: `{d.churn}`.", "",
            "| method | wall s (CLI) | cycle s (JSON) | bytes_read MiB | × disk | changed MiB | "
            "stored MiB | QEMU read() MiB | QEMU device reads MiB | digests | notes |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in d.rows:
        j = r.result
        notes = "; ".join(j.get("notes") or []) or "—"
        rows.append(
            f"| {r.method} | {r.wall_s:.2f} | {j['seconds']:.2f} | {j['bytes_read'] / MiB:.1f} | "
            f"{j['bytes_read'] / d.disk_size:.3f} | {j['changed_bytes'] / MiB:.1f} | "
            f"{j['stored_bytes'] / MiB:.1f} | {r.qemu_rchar / MiB:.1f} | {r.qemu_disk_read / MiB:.1f} | "
            f"{json.dumps(j['digests'])} | {notes} |")
    cached = ", ".join(f"{r.cached_before / MiB:.1f} MiB" for r in d.rows)
    rows += ["", f"Image bytes still in the page cache after eviction, before each cycle: {cached}."]
    return rows


def verdict(results: Sequence[RpoResult]) -> list[str]:
    goal = [r for r in results if r.rate == GOAL_RATE]
    if not goal:
        return [f"(the {GOAL_RATE:g} MiB/s goal rate was not run)"]
    r = goal[0]
    worst = max(r.ages)
    word = "met" if worst <= RPO_GOAL_S else "MISSED"
    return [f"Goal RPO ≤ {RPO_GOAL_S:g} s at {GOAL_RATE:g} MiB/s: **{word}** "
            f"(max point age {worst:.1f} s, p95 {pct(r.ages, 95):.1f} s)."]


def report(results: Sequence[RpoResult], delta: DeltaResult | None, command: str) -> str:
    lines = [f"Command: `{command}`", "", *environment(), ""]
    if results:
        lines += ["### RPO under churn", "", *rpo_table(results), "", *verdict(results), "",
                  "### Where a cycle's time goes (in-process cycles right after serve, churn on)", "",
                  *phase_table(results), ""]
    if delta is not None:
        lines += ["### One delta cycle: dirty bitmap vs hash-diff, same change", "", *delta_table(delta), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="RPO sampling window per rate")
    p.add_argument("--rates", default="1,5,20", help="guest churn rates, MiB/s (comma-separated)")
    p.add_argument("--disk-mib", type=int, default=1024, help="guest disk size")
    p.add_argument("--fill-mib", type=int, default=None, help="random data on the disk (default: half)")
    p.add_argument("--churn-file-mib", type=int, default=256, help="file the churn writer spreads over")
    p.add_argument("--delta-mib", type=int, default=64, help="churn before the CBT/hash-diff cycle")
    p.add_argument("--skip-delta", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where images and vaults go")
    args = p.parse_args(argv)
    args.fill_mib = args.disk_mib // 2 if args.fill_mib is None else args.fill_mib
    if args.fill_mib + args.churn_file_mib + 100 > args.disk_mib:
        p.error("--fill-mib + --churn-file-mib must leave ~100 MiB of the disk for the system")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: the guest image is built on loop devices")
    command = "   ".join([".venv/bin/python bench/rpo.py", *(argv if argv is not None else sys.argv[1:])])
    command = " ".join(command.split())
    work = Path(tempfile.mkdtemp(prefix="rh-rpo-", dir=args.workdir))  # short: UNIX sockets
    try:
        log(f"building a {args.disk_mib} MiB guest disk with {args.fill_mib} MiB of data in {work}")
        base = build_base(work, args.disk_mib, args.fill_mib)
        results = [rpo_run(work, base, float(rate), args) for rate in args.rates.split(",") if rate]
        delta = None if args.skip_delta else delta_run(work, base, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results, delta, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
