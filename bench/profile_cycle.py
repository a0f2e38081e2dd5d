#!/usr/bin/env python3
"""Benchmark aid (not a test): where a ``rehost replicate`` spends its time, per thread.

Copies IMAGE (a raw image, e.g. the one ``bench/replication.py --workdir DIR`` leaves), runs
the initial cycle and scattered-write deltas of it (``--deltas 1,10``: 1 % then 10 %) under
``py-spy record --threads --idle --nonblocking`` (``pip install py-spy``; ``--nonblocking``
so the sampling does not stop the process it measures), and prints each thread's samples by
what they were doing.

    .venv/bin/python bench/profile_cycle.py IMAGE [--workdir DIR] [--rate 250] [--deltas 1,10]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replication import read_through, scatter_writes

#: what a sample was doing: the first of these found in its stack (outermost frames first)
CATEGORIES = (
    ("imports", "_find_and_load"),
    ("command line parsing (typer, pydantic)", "parse_args"),
    ("read the disk", "readinto_many"),
    ("wait for a worker's chunk", "Future.result"),
    ("block digests (XXH3)", "digest_blocks"),
    ("blob ids (keyed BLAKE3)", "blob_id"),
    ("compress + encrypt (Sealer.seal)", "Sealer.seal"),
    ("store packs (write + fsync)", "_store_pack"),
    ("commit the point", "save_point"),
    ("digest cache", "DigestCache"),
    ("extents", "extents"),
    ("idle in a thread pool", "_worker"),
    ("lease keeper (sleeps)", "_Keeper._run"),
)


def summarize(raw: Path, rate: int) -> list[str]:
    """py-spy's raw (collapsed) stacks -> a markdown table: thread, category, seconds, share."""
    by_thread: collections.Counter[str] = collections.Counter()
    cats: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else "main (starting)"
        by_thread[thread] += n
        name = next((label for label, key in CATEGORIES if key in stack), None)
        if name is None:
            name = "other: " + (frames[-1].split(" (")[0] if len(frames) > 1 else "?")
        cats[thread][name] += n
    out = ["| thread | doing | s | share |", "|---|---|--:|--:|"]
    for thread, total in by_thread.most_common():
        for name, n in cats[thread].most_common(6):
            out.append(f"| {thread} | {name} | {n / rate:.2f} | {100 * n / total:.0f} % |")
    return out


def profiled(cmd: list[str], raw: Path, rate: int, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(["py-spy", "record", "--threads", "--idle", "--nonblocking", "-r", str(rate), "-f", "raw",
                    "-o", str(raw), "--", *cmd], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Profile one initial and one 1 % delta cycle of a raw image.")
    p.add_argument("image", type=Path)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--rate", type=int, default=250, help="samples per second (default 250)")
    p.add_argument("--deltas", default="1", help="delta cycles to profile after the initial one, "
                   "in percent of blocks overwritten, comma-separated (default 1)")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rehost-profile-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    image = work / "disk.raw"
    shutil.copyfile(args.image, image)
    read_through(image)
    env = {**os.environ, "REHOST_PASSWORD": "rehost-bench"}
    rehost = [sys.executable, "-m", "rehost.cli.main", "--vault", str(work / "vault")]
    subprocess.run([*rehost, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*rehost, "source", "add-image", "bench", str(image)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    deltas = [float(d) for d in args.deltas.split(",") if d]
    for phase, percent in [("initial", 0.0), *((f"delta {d:g}%", d) for d in deltas)]:
        if percent:
            scatter_writes(image, percent / 100, 1)
        os.sync()
        raw = work / f"{phase.replace(' ', '-').replace('%', '')}.txt"
        wall = profiled([*rehost, "replicate", "bench"], raw, args.rate, env)
        print(f"\n{phase}: {wall:.2f} s wall under py-spy\n")
        print("\n".join(summarize(raw, args.rate)))
    print(f"\nraw stacks in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
