"""Running and measuring commands for the benchmarks in bench/ (see docs/benchmarks.md).

A measured command runs under GNU time (peak RSS); its CPU time and I/O come from this
process's own counters, to which Linux adds those of every reaped descendant.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Measured:
    """One command run under GNU time.

    ``rchar`` and ``disk_read`` are the growth of /proc/self/io, which adds the counters of
    every reaped descendant: bytes returned by read-family syscalls (read, pread, readv on
    files and pipes; not recv on sockets, not Linux AIO) and bytes the block layer read from
    the device (0 when the page cache serves everything; O_DIRECT reads always count).
    """

    wall: float
    cpu: float  # user + system seconds of the tool and its descendants
    others: float  # CPU seconds that the rest of the machine used meanwhile
    rss: int  # peak RSS of the largest process of the tree (GNU time %M), bytes
    rchar: int
    disk_read: int
    sync: float  # seconds a `sync` right after took: what the tool left unflushed
    stdout: str


def _proc_io() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat, iowait excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_share(window: float = 1.0) -> float:
    """Share of the machine's CPUs busy during the next ``window`` seconds."""
    before = _busy_seconds()
    time.sleep(window)
    return (_busy_seconds() - before) / window / len(os.sched_getaffinity(0))


def wait_for_idle(timeout: float, threshold: float = 0.1) -> bool:
    """Wait up to ``timeout`` seconds for a one-second window with the CPUs less than
    ``threshold`` busy (a shared machine: others' tests would skew a run)."""
    deadline = time.monotonic() + timeout
    while busy_share() >= threshold:
        if time.monotonic() > deadline:
            return False
    return True


def noisy(m: Measured, threshold: float = 0.1) -> bool:
    """Did other processes use more than ``threshold`` of the CPUs during the run (and more
    than the 0.05 s that /proc/stat's 10 ms ticks can miscount)?"""
    return m.others > max(threshold * m.wall * len(os.sched_getaffinity(0)), 0.05)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def env_with(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


def run(cmd: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    """Run an untimed helper command; fail the benchmark loudly if it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env_with(env))
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def measure(cmd: Sequence[str | Path], env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd`` once, timed; nothing is left to flush before it starts (``sync``)."""
    with tempfile.NamedTemporaryFile("r", prefix="rehost-bench-time-") as rss_file:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *map(str, cmd)]
        os.sync()
        io, cpu, busy, t0 = _proc_io(), _children_cpu(), _busy_seconds(), time.monotonic()
        proc = subprocess.run(timed, capture_output=True, text=True, env=env_with(env))
        wall = time.monotonic() - t0
        busy, cpu, io2 = _busy_seconds() - busy, _children_cpu() - cpu, _proc_io()
        os.sync()
        flush = time.monotonic() - t0 - wall
        rss_kib = int(rss_file.read().split()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(timed)}\n{proc.stderr}")
    return Measured(wall, cpu, max(busy - cpu, 0.0), rss_kib * 1024, io2["rchar"] - io["rchar"],
                    io2["read_bytes"] - io["read_bytes"], flush, proc.stdout)


def du(path: Path) -> int:
    """``du -sb``: apparent bytes of a file or a tree."""
    return int(run(["du", "-sb", path]).split()[0])


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MiB:,.1f}"


def machine(work: Path) -> dict[str, str]:
    cpu = re.search(r"^model name\s*: (.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    virt = re.search(r"^Hypervisor vendor:\s*(.*)$", run(["lscpu"]), re.MULTILINE)
    source, fstype = run(["df", "--output=source,fstype", work]).splitlines()[-1].split()
    return {
        "cpus (nproc)": str(len(os.sched_getaffinity(0))),
        "cpu": (cpu.group(1) if cpu else platform.processor())
        + (f" ({virt.group(1)} guest)" if virt else ""),
        "memory": f"{int(mem.group(1)) / 1024**2:.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "load average at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)",
        "workdir": f"{work} ({fstype} on {source})",
    }
