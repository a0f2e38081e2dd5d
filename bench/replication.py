#!/usr/bin/env python3
"""Benchmark (not a test): rehost replication against qemu-img, restic, borg and rsync.

One ext4 image full of real files (/usr/lib, /usr/share) is copied once by every tool, then
changed by scattered 4 KiB writes (1 %, then 10 % of the image) and copied again; every
measured step is the median of ``--repeat`` runs. The run prints the machine, the tool
versions and a markdown table with ratios, writes the same to
``bench/out/replication-<date>.md`` and ends by checking that rehost's data is right.

    .venv/bin/python bench/replication.py [--size-gib 2] [--workdir DIR] [--repeat 3] [--encrypt]

The method (warm page cache, how bytes read are counted) is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

from harness import GiB, Measured, MiB, du, env_with, machine, measure, mib, noisy, run, wait_for_idle

BLOCK = 4096
FILL = 0.75  # share of the image filled with file data
SOURCES = (Path("/usr/lib"), Path("/usr/share"))
OUT_DIR = Path(__file__).resolve().parent / "out"
MACHINE = "bench"
RESTIC_ENV = {"RESTIC_PASSWORD": "rehost-bench"}
BORG_PASSPHRASE = "rehost-bench"
#: the phase of rehost's later compression of its initial copy (Rehost.compress_later)
COMPRESSED = "initial, compressed later"
QCOW2_CMD = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
# --ignore-times: the quick check (same size and mtime second) would skip a file changed
# within the second of the last copy; rehost and restic never skip a changed image.
RSYNC_CMD = ["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats"]


@dataclass(frozen=True)
class Run:
    phase: str
    tool: str
    m: Measured
    stored: int | None  # bytes the tool's store grew by (du -sb after - before); None: no history
    changed: int | None = None  # rehost: bytes it found changed
    note: str = ""


# -- the data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    image: Path
    size: int
    files: int
    file_bytes: int
    allocated: int  # bytes allocated to the image file right after mkfs

    def describe(self) -> str:
        return (f"{self.size / GiB:.2f} GiB raw ext4 image ({self.image.name}) holding {self.files} files, "
                f"{self.file_bytes / MiB:.0f} MiB of file data copied from "
                f"{' and '.join(map(str, SOURCES))}; {self.allocated / MiB:.0f} MiB allocated after "
                "mkfs.ext4 -d")


def _regular_files(roots: Sequence[Path]) -> Iterator[tuple[Path, int]]:
    """Regular files under ``roots`` in a stable order (no symlinks, devices or sockets)."""
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if path.is_file() and not path.is_symlink():
                    yield path, st.st_size


def stage_files(dest: Path, budget: int, max_files: int) -> tuple[int, int]:
    """Copy files into ``dest`` until ``budget`` bytes (counted in 4 KiB blocks) are used."""
    files = data = used = 0
    for path, size in _regular_files(SOURCES):
        cost = -(-size // BLOCK) * BLOCK
        if used + cost > budget:
            continue  # too big for what is left; a smaller file may still fit
        target = dest / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except OSError:
            continue
        files, data, used = files + 1, data + size, used + cost
        if budget - used < 64 * 1024 or files >= max_files:
            break
    return files, data


def make_image(work: Path, size: int) -> Dataset:
    staging, image = work / "staging", work / "disk.raw"
    # ext4 makes one inode per 16 KiB by default: leave a fifth of them spare.
    files, data = stage_files(staging, int(size * FILL), max_files=size // 16384 * 4 // 5)
    run(["mkfs.ext4", "-q", "-d", staging, image, f"{size // 1024}k"])
    shutil.rmtree(staging)
    return Dataset(image, size, files, data, image.stat().st_blocks * 512)


def read_through(path: Path) -> None:
    """Read a file once so that it sits in the page cache (warm-cache runs)."""
    with path.open("rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        while f.readinto(buf):
            pass


def scatter_writes(image: Path, fraction: float, seed: int) -> int:
    """Overwrite ``fraction`` of the image's 4 KiB blocks, chosen at random, with random
    bytes; return the bytes written. Seeded: every run writes the same blocks."""
    size = image.stat().st_size
    rng = random.Random(seed)
    blocks = sorted(rng.sample(range(size // BLOCK), int(size * fraction) // BLOCK))
    fd = os.open(image, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, rng.randbytes(BLOCK), b * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(blocks) * BLOCK


# -- the tools --------------------------------------------------------------------------


def snapshot_rehost(work: Path) -> tuple[Path, str]:
    """Copy the rehost package into the workdir, so that edits made to the tree while the
    benchmark runs cannot mix two versions; return the copy and a digest of its sources."""
    src = Path(__file__).resolve().parents[1] / "rehost"
    dest = work / "rehost-src"
    shutil.copytree(src, dest / "rehost", ignore=shutil.ignore_patterns("__pycache__"))
    # byte-compiled as an installed package is (pip compiles at install time); without it every
    # run would compile rehost again where PYTHONDONTWRITEBYTECODE is set (~0.2 s a command)
    compileall.compile_dir(dest, quiet=1)
    digest = hashlib.sha256()
    for path in sorted((dest / "rehost").rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return dest, digest.hexdigest()[:16]


class Rehost:
    name = "rehost"

    def __init__(self, work: Path, image: Path, src: Path, encrypt: bool) -> None:
        self.image, self.vault, self.src, self.encrypt = image, work / "rehost-vault", src, encrypt
        self.store = self.vault

    def cli(self, *args: str | Path) -> list[str | Path]:
        return [sys.executable, "-m", "rehost.cli.main", "--vault", self.vault, *args]

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.src), "REHOST_PASSWORD": "rehost-bench"}

    def fresh(self) -> None:
        shutil.rmtree(self.vault, ignore_errors=True)
        run(self.cli("init", *(["--encrypt"] if self.encrypt else [])), self.env())
        run(self.cli("source", "add-image", MACHINE, self.image), self.env())

    def copy(self, phase: str) -> Run:
        before = du(self.vault) if self.vault.exists() else 0
        m = measure(self.cli("replicate", MACHINE, "--json"), self.env())
        r = json.loads(m.stdout)
        note = (f"own count: cycle {r['seconds']:.1f} s, read {r['bytes_read'] / MiB:.1f} MiB, "
                f"changed {r['changed_bytes'] / MiB:.1f} MiB, digests from {r['digests']['0']}")
        return Run(phase, self.name, m, du(self.vault) - before, r["changed_bytes"], note)

    def compress_later(self, args: argparse.Namespace) -> Run:
        """On local storage the initial copy is stored uncompressed; ``rehost prune`` compresses
        it (``rehost serve`` does on its own, in the background). Its own row: what the
        deferral costs later, and the store's size once it is done."""
        wait_for_idle(args.idle_wait)
        before = du(self.vault)
        m = measure(self.cli("prune", "--json"), self.env())
        n = json.loads(m.stdout)["packs_compressed"]
        after = du(self.vault)
        return Run(COMPRESSED, self.name, m, after - before,
                   note=f"`rehost prune`: {n} pack(s) compressed, store {mib(before)} -> {mib(after)} MiB")


class QemuImg:
    name = "qemu-img convert"

    def __init__(self, work: Path, image: Path) -> None:
        self.image, self.out = image, work / "copy.qcow2"
        self.store = self.out

    def fresh(self) -> None:
        self.out.unlink(missing_ok=True)

    def copy(self, phase: str) -> Run:
        m = measure([*QCOW2_CMD, self.image, self.out])
        return Run(phase, self.name, m, du(self.out))


class Restic:
    name = "restic backup"

    def __init__(self, work: Path, image: Path) -> None:
        self.image, self.repo = image, work / "restic-repo"
        self.store = self.repo

    def fresh(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run(["restic", "--repo", self.repo, "init"], RESTIC_ENV)

    def copy(self, phase: str) -> Run:
        before = du(self.repo)
        m = measure(["restic", "--repo", self.repo, "--no-cache", "backup", "--json", self.image], RESTIC_ENV)
        summary = next(json.loads(line) for line in reversed(m.stdout.splitlines())
                       if '"summary"' in line)
        note = (f"own count: read {summary['total_bytes_processed'] / MiB:.1f} MiB, "
                f"new chunks {summary['data_added'] / MiB:.1f} MiB before compression")
        return Run(phase, self.name, m, du(self.repo) - before, note=note)


class Borg:
    """borg 1.2, the other deduplicating backup tool an admin would pick: ``repokey``
    encryption (AES-CTR + HMAC-SHA256, like restic it always encrypts here), its default
    compression (lz4) and chunker (buzhash, ~2 MiB chunks). Its client-side cache and security
    folder live next to the repository (``BORG_BASE_DIR``) and are saved and restored with it,
    so a repeated delta finds the repository and its cache as they were."""

    name = "borg create"

    def __init__(self, work: Path, image: Path) -> None:
        self.image, self.store = image, work / "borg"
        self.repo = self.store / "repo"
        self.runs = 0

    def env(self) -> dict[str, str]:
        return {"BORG_PASSPHRASE": BORG_PASSPHRASE, "BORG_BASE_DIR": str(self.store / "home")}

    def fresh(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        self.store.mkdir()
        run(["borg", "init", "--encryption=repokey", self.repo], self.env())

    def copy(self, phase: str) -> Run:
        before = du(self.repo)
        self.runs += 1
        m = measure(["borg", "create", "--json", f"{self.repo}::run-{self.runs}", self.image], self.env())
        stats = json.loads(m.stdout)["archive"]["stats"]
        note = (f"own count: read {stats['original_size'] / MiB:.1f} MiB, "
                f"deduplicated {stats['deduplicated_size'] / MiB:.1f} MiB after compression")
        return Run(phase, self.name, m, du(self.repo) - before, note=note)


class Rsync:
    name = "rsync --inplace"

    def __init__(self, work: Path, image: Path) -> None:
        self.image, self.mirror = image, work / "rsync-copy.raw"
        self.store = self.mirror

    def fresh(self) -> None:
        self.mirror.unlink(missing_ok=True)
        run([*RSYNC_CMD, self.image, self.mirror])  # the pre-change copy, not timed

    def copy(self, phase: str) -> Run:
        m = measure([*RSYNC_CMD, self.image, self.mirror])
        literal = _rsync_stat(m.stdout, "Literal data")
        matched = _rsync_stat(m.stdout, "Matched data")
        note = (f"own count: literal {literal / MiB:.1f} MiB, matched {matched / MiB:.1f} MiB; "
                "overwrites the copy, keeps no history")
        return Run(phase, self.name, m, None, note=note)


def _rsync_stat(stats: str, label: str) -> int:
    found = re.search(rf"^{label}: ([\d,]+) bytes", stats, re.MULTILINE)
    return int(found.group(1).replace(",", "")) if found else 0


class Tool(Protocol):
    name: str
    image: Path  # what it copies
    store: Path  # what a copy adds to or changes: a folder or a file

    def fresh(self) -> None: ...

    def copy(self, phase: str) -> Run: ...


# -- the scenario -----------------------------------------------------------------------


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)  # phase -> bytes the scattered writes changed
    checks: list[tuple[str, bool]] = field(default_factory=list)


def quiet_copy(tool: Tool, phase: str, reset: Callable[[], None], args: argparse.Namespace) -> Run:
    """One measured copy, started when the machine is idle and the image is in the page cache.
    A run that other processes skewed is undone by ``reset`` and done again, at most
    ``args.retries`` times."""
    for attempt in range(args.retries + 1):
        if attempt:
            reset()
        # every copy starts with the image in the page cache: it was read once after it was
        # made, yet three runs of 2026-12-07 found it gone by the initial copies (1.4 GiB read
        # from the device by rehost and qemu-img, none by restic after them)
        read_through(tool.image)
        wait_for_idle(args.idle_wait)
        r = tool.copy(phase)
        if not noisy(r.m):
            break
    retried = f"retried {attempt}x (busy machine)" if attempt else ""
    return replace(r, note="; ".join(filter(None, [r.note, retried])))


def delta_copy(tool: Tool, phase: str, backup: Path, args: argparse.Namespace) -> Run:
    """The median of ``repeat`` delta copies, each from the same store: the store is saved
    first and put back before every run after the first (and before a skewed run is redone).
    The last run's store stays for the next phase."""
    _copy_path(tool.store, backup)
    try:
        runs = []
        for i in range(args.repeat):
            if i:
                _copy_path(backup, tool.store)
            runs.append(quiet_copy(tool, phase, lambda: _copy_path(backup, tool.store), args))
        return median_run(runs)
    finally:
        _remove_path(backup)


def median_run(runs: Sequence[Run]) -> Run:
    """The run with the median wall time, its note saying of how many and their range."""
    walls = sorted(r.m.wall for r in runs)
    median = sorted(runs, key=lambda r: r.m.wall)[(len(runs) - 1) // 2]
    spread = f"median of {len(runs)} ({walls[0]:.2f}–{walls[-1]:.2f} s)" if len(runs) > 1 else ""
    return replace(median, note="; ".join(filter(None, [spread, median.note])))


def _copy_path(src: Path, dest: Path) -> None:
    _remove_path(dest)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copy2(src, dest)


def _remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def initial_phase(tools: Sequence[Tool], args: argparse.Namespace) -> list[Run]:
    """Every tool copies the whole image ``repeat`` times into a fresh store, the tools taking
    turns; the run with the median wall time is kept (the last store stays for the deltas)."""
    tries: dict[str, list[Run]] = {tool.name: [] for tool in tools}
    for _ in range(args.repeat):
        for tool in tools:
            tool.fresh()
            tries[tool.name].append(quiet_copy(tool, "initial", tool.fresh, args))
    return [median_run(runs) for runs in tries.values()]


def compare(label: str, image: Path, copy: Path, fmt: str) -> tuple[str, bool]:
    proc = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt, image, copy],
                          capture_output=True, text=True)
    return label, proc.returncode == 0


def verify_rehost(rehost: Rehost, image: Path, work: Path) -> list[tuple[str, bool]]:
    """Export the latest point and compare it with the image; read and verify every pack."""
    exported = work / "rehost-export.raw"
    exported.unlink(missing_ok=True)
    run(rehost.cli("export", MACHINE, "--point", "latest", "--output", exported), rehost.env())
    checks = [compare("rehost export of the latest point = image", image, exported, "raw")]
    exported.unlink()
    proc = subprocess.run(rehost.cli("check", "--read-data"), capture_output=True, env=env_with(rehost.env()))
    checks.append(("rehost check --read-data", proc.returncode == 0))
    return checks


def scenario(work: Path, src: Path, args: argparse.Namespace) -> tuple[Dataset, Results]:
    data = make_image(work, image_size(args))
    read_through(data.image)  # warm cache: every later read of the image comes from RAM
    rehost, qemu = Rehost(work, data.image, src, args.encrypt), QemuImg(work, data.image)
    restic, rsync, borg = Restic(work, data.image), Rsync(work, data.image), Borg(work, data.image)
    run(rehost.cli("--help"), rehost.env())  # warm rehost's Python imports too
    dedup: list[Tool] = [restic, borg] if shutil.which("borg") else [restic]
    res = Results(runs=initial_phase([rehost, qemu, *dedup], args))
    res.runs.append(rehost.compress_later(args))
    res.checks.append(compare("qemu-img copy = image", data.image, qemu.out, "qcow2"))
    rsync.fresh()
    for phase, fraction, seed in (("delta 1%", 0.01, args.seed), ("delta 10%", 0.10, args.seed + 1)):
        res.written[phase] = scatter_writes(data.image, fraction, seed)
        changers: list[Tool] = [rehost, rsync, *dedup]
        res.runs += [delta_copy(tool, phase, work / "backup", args) for tool in changers]
        res.checks.append(compare(f"rsync copy = image ({phase})", data.image, rsync.mirror, "raw"))
    res.checks += verify_rehost(rehost, data.image, work)
    return data, res


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    label: str
    value: float
    target: str = ""
    met: bool | None = None

    def row(self) -> str:
        verdict = {True: "met", False: "**missed**", None: ""}[self.met]
        return f"| {self.label} | {self.value:.2f} | {self.target} | {verdict} |"


#: the goals of issue 17 ("The replication path at the speed of the hardware")
GOALS = {"qemu": 2.0, "restic initial": 4.0, "delta 1%": 5.0, "delta 10%": 10.0, "restic delta 1%": 8.0,
         "stored": 1.05}


def _times(label: str, slower: float, faster: float, goal: float | None = None) -> Ratio:
    """``slower / faster`` against a "≥ goal" (none: context only)."""
    if goal is None:
        return Ratio(label, slower / faster)
    return Ratio(label, slower / faster, f"≥ {goal:g}", slower >= goal * faster)


def ratios(runs: Sequence[Run]) -> list[Ratio]:
    by = {(r.phase, r.tool): r for r in runs}
    wall = {k: r.m.wall for k, r in by.items()}
    mine = {r.phase: r for r in runs if r.tool == Rehost.name}
    qemu_total = wall["initial", QemuImg.name] + by["initial", QemuImg.name].m.sync  # its flush included
    first = wall["initial", Rehost.name]
    out = [
        Ratio("initial: rehost / (qemu-img + its flush) time", first / qemu_total, f"≤ {GOALS['qemu']:g}",
              first <= GOALS["qemu"] * qemu_total),
        _times("initial: restic / rehost time", wall["initial", Restic.name], first, GOALS["restic initial"]),
    ]
    if ("initial", Borg.name) in wall:
        out.append(_times("initial: borg / rehost time", wall["initial", Borg.name], first))
    if COMPRESSED in mine:  # context: the copy and its later compression, end to end
        both = first + mine[COMPRESSED].m.wall
        out.append(Ratio("initial + its later compression: rehost / (qemu-img + its flush) time",
                         both / qemu_total))
        out.append(_times("initial + its later compression: restic / rehost time",
                          wall["initial", Restic.name], both))
    for phase in (p for p in mine if p not in ("initial", COMPRESSED)):
        r = mine[phase]
        out.append(_times(f"{phase}: rsync / rehost time", wall[phase, Rsync.name], r.m.wall,
                          GOALS.get(phase)))
        out.append(_times(f"{phase}: restic / rehost time", wall[phase, Restic.name], r.m.wall,
                          GOALS.get(f"restic {phase}")))
        if (phase, Borg.name) in wall:
            out.append(_times(f"{phase}: borg / rehost time", wall[phase, Borg.name], r.m.wall))
        stored = (r.stored or 0) / (r.changed or 1)
        out.append(Ratio(f"{phase}: rehost stored / changed bytes", stored, f"≤ {GOALS['stored']:g}",
                         stored <= GOALS["stored"]))
    return out


def run_table(runs: Sequence[Run]) -> list[str]:
    base = {r.phase: r.m.wall for r in runs if r.tool == Rehost.name}
    lines = ["| phase | tool | wall s | × rehost | sync after s | CPU s | others' CPU s "
             "| read() syscalls MiB | device reads MiB | stored +MiB | peak RSS MiB | notes |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in runs:
        lines.append(f"| {r.phase} | {r.tool} | {r.m.wall:.2f} | {r.m.wall / base[r.phase]:.2f} "
                     f"| {r.m.sync:.2f} | {r.m.cpu:.1f} | {r.m.others:.1f}{' ⚠' if noisy(r.m) else ''} "
                     f"| {mib(r.m.rchar)} | {mib(r.m.disk_read)} | {mib(r.stored)} | {r.m.rss / MiB:.0f} "
                     f"| {r.note} |")
    return lines


def versions(rehost_digest: str, encrypt: bool) -> dict[str, str]:
    libs = ", ".join(f"{lib} {version(lib)}" for lib in ("blake3", "xxhash", "zstandard"))
    return {
        "rehost": f"{version('rehost')}, sources sha256 {rehost_digest}… "
                  f"(Python {platform.python_version()}, {libs}); repository "
                  + ("encrypted (init --encrypt)" if encrypt else "not encrypted (plain init)"),
        "qemu-img": run(["qemu-img", "--version"]).splitlines()[0],
        "restic": run(["restic", "version"]).splitlines()[0],
        "borg": run(["borg", "--version"]).splitlines()[0] if shutil.which("borg") else "not installed",
        "rsync": run(["rsync", "--version"]).splitlines()[0],
        "mke2fs": run(["mke2fs", "-V"]).splitlines()[0],
    }


def report(command: str, info: dict[str, str], vers: dict[str, str], data: Dataset, res: Results) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## rehost replication benchmark, {when}", "", f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()] + [""]
    lines += [f"- {k}: {v}" for k, v in vers.items()] + [""]
    lines += [f"Data: {data.describe()}.", ""]
    lines += [f"Delta phases overwrite random 4 KiB blocks: {phase} = {n / MiB:.1f} MiB changed "
              f"({n // BLOCK} blocks)." for phase, n in res.written.items()] + [""]
    lines += run_table(res.runs)
    if any(noisy(r.m) for r in res.runs):
        lines += ["", "⚠ other processes used more than 10 % of the CPUs during that run: "
                  "its time is skewed even after the retries; rerun on a quiet machine."]
    lines += ["", "| ratio | value | target | |", "|---|--:|---|---|"]
    lines += [r.row() for r in ratios(res.runs)] + [""]
    lines += [f"- {label}: {'OK' if ok else 'FAIL'}" for label, ok in res.checks]
    return "\n".join(lines) + "\n"


# -- the command ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-gib", type=float, default=2.0, help="image size (default 2)")
    p.add_argument("--workdir", type=Path, help="empty folder to work in (default: a temp dir in /var/tmp, "
                   "removed at the end); needs about 6x the image size free")
    p.add_argument("--repeat", type=int, default=3, help="runs of every measured copy per tool (initial and "
                   "deltas, each delta from the same store), median kept")
    p.add_argument("--seed", type=int, default=1, help="seed of the scattered writes")
    p.add_argument("--encrypt", action="store_true", help="rehost init --encrypt (restic always encrypts)")
    p.add_argument("--idle-wait", type=float, default=120.0, help="before each measured run, wait up to "
                   "this many seconds for the CPUs to be less than 10%% busy (default 120)")
    p.add_argument("--retries", type=int, default=2, help="redo a run that other processes skewed "
                   "(more than 10%% of the CPUs busy) up to this many times (default 2)")
    p.add_argument("--keep", action="store_true", help="keep the temp workdir")
    return p.parse_args(argv)


def workdir(given: Path | None, size: int) -> Path:
    if given is None:
        work = Path(tempfile.mkdtemp(prefix="rehost-bench-", dir="/var/tmp"))
    else:
        work = given.absolute()
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            raise SystemExit(f"{work} is not empty")
    if shutil.disk_usage(work).free < 6 * size:
        raise SystemExit(f"{work}: need {6 * size / GiB:.1f} GiB free")
    return work


def image_size(args: argparse.Namespace) -> int:
    return int(args.size_gib * GiB) // MiB * MiB


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = workdir(args.workdir, image_size(args))
    command = " ".join([".venv/bin/python bench/replication.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        src, digest = snapshot_rehost(work)
        info, vers = machine(work), versions(digest, args.encrypt)
        data, res = scenario(work, src, args)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(command, info, vers, data, res)
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"replication-{datetime.now(UTC):%Y-%m-%d}{'-encrypted' if args.encrypt else ''}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 0 if all(ok for _, ok in res.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
