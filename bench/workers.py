"""Many machines at once: 8 image machines replicated by ``rehost serve`` with 1, 2 and 8
workers (issue 10). Prints wall time and total throughput per worker count, and the ratios.

    .venv/bin/python bench/workers.py [--machines 8] [--size-mib 256] [--workers 1,2,8]

Each run starts from a fresh vault: the initial copy of all machines in one scheduling pass
(``rehost serve --once``), then a delta pass after 1 % of each disk changed. Each disk is a
mix as servers have: a third incompressible data, a third compressible text, a third holes.
The machines share nothing, so deduplication does not flatter the numbers. The baseline is
the same cycles one at a time (1 worker), which is what rehost did before leases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MiB, machine, measure, noisy, run, wait_for_idle

REHOST = [sys.executable, "-m", "rehost.cli.main"]


def make_disk(path: Path, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz ", k=8)) for _ in range(512)]
    third = size // 3 // MiB * MiB
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(third))
        f.write(b"".join(rnd.choice(words) for _ in range(third // 8)))


def change(path: Path, share: float, seed: int) -> None:
    """Rewrite ``share`` of the disk in 64 KiB pieces scattered over it."""
    rnd = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(int(size * share) // 65536):
            f.seek(rnd.randrange(0, size // 65536) * 65536)
            f.write(os.urandom(65536))


def rehost(vault: Path, *args: str) -> str:
    return run([*REHOST, "--vault", vault, *args])


def one_run(work: Path, disks: list[Path], workers: int) -> dict[str, float]:
    vault = work / f"vault-{workers}"
    shutil.rmtree(vault, ignore_errors=True)
    rehost(vault, "init")
    rehost(vault, "policy", "create", "bench", "--rpo-threshold", "1h", "--crash-consistent-every", "1s")
    for i, d in enumerate(disks):
        rehost(vault, "source", "add-image", f"vm{i}", str(d))
        rehost(vault, "policy", "attach", f"vm{i}", "bench")
    serve = [*REHOST, "--vault", vault, "serve", "--once", "--listen", "off", "--workers", str(workers)]
    wait_for_idle(30)
    initial = measure(serve)
    for i, d in enumerate(disks):
        change(d, 0.01, 1000 * workers + i)
    time.sleep(1.1)  # the policy's 1 s interval
    wait_for_idle(30)
    delta = measure(serve)
    points = json.loads(rehost(vault, "machines", "--json"))
    assert all(m["points"] == 2 for m in points), points
    shutil.rmtree(vault)
    return {"initial": initial.wall, "initial_cpu": initial.cpu, "delta": delta.wall,
            "delta_cpu": delta.cpu, "noisy": float(noisy(initial) or noisy(delta))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--workers", default="1,2,8")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rehost-bench-workers-", dir=args.workdir))
    try:
        for k, v in machine(work).items():
            print(f"{k}: {v}")
        size = args.size_mib * MiB
        disks = []
        for i in range(args.machines):
            disks.append(work / f"vm{i}.raw")
            make_disk(disks[-1], size, i)
        total = size * args.machines
        print(f"\n{args.machines} machines x {args.size_mib} MiB ({total / MiB:,.0f} MiB); "
              "initial = first copy of all, delta = all after 1 % changed")
        print(f"{'workers':>8} {'initial s':>10} {'MiB/s':>8} {'cpu s':>7} {'delta s':>8} {'cpu s':>7}")
        results = {}
        for w in (int(x) for x in args.workers.split(",")):
            r = results[w] = one_run(work, disks, w)
            note = "  (other load seen: rerun)" if r["noisy"] else ""
            print(f"{w:>8} {r['initial']:>10.2f} {total / MiB / r['initial']:>8.1f} {r['initial_cpu']:>7.1f} "
                  f"{r['delta']:>8.2f} {r['delta_cpu']:>7.1f}{note}", flush=True)
        base = results[min(results)]
        for w, r in sorted(results.items()):
            print(f"{w} workers vs {min(results)}: initial {base['initial'] / r['initial']:.2f}x, "
                  f"delta {base['delta'] / r['delta']:.2f}x faster")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
