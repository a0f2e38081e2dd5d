#!/usr/bin/env python3
"""Benchmark (not a test): a fleet vault under continuous replication, with 1 and then 2
``rehost worker`` processes (issue 12; docs/benchmarks.md, "A fleet: workers").

For each worker count a fresh fleet vault: PostgreSQL state, an ``s3://`` repository on
SeaweedFS, Redis as Celery's broker (all started here from the testkit), ``--machines`` image
machines (sparse raw disks, ``--data-mib`` of random data each) under one policy
(crash-consistent every ``--every``), ``rehost serve --listen off`` as the scheduler and N
``rehost worker`` processes, each with a folder of its own (``rehost init --join``). A writer
rewrites 1 % of every disk once per ``--every``, so every cycle has a delta to ship.

After every machine has its first point (the initial copies: timed, not part of the steady
state), the steady state is measured for ``--seconds``:
- cycles per minute: replicate jobs that succeeded in the window;
- RPO: the age of each machine's newest point, sampled every 5 s for every machine (p50, p95,
  max): what an operator's RPO column shows;
- CPU per cycle: user + system seconds of the worker processes over the window divided by its
  cycles (workers run the cycles; the scheduler, PostgreSQL, Redis and SeaweedFS are shown
  apart, as they are shared).

    .venv/bin/python bench/fleet.py [--machines 50] [--workers 1 2] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from rehost.jobs.models import JobRow
from rehost.testkit.fleet import Fleet
from rehost.testkit.postgres import Postgres
from rehost.testkit.redis import RedisServer
from rehost.testkit.seaweedfs import SeaweedFS
from rehost.vault import inventory, point_records, policies
from rehost.vault.vault import Vault

MiB = 1 << 20
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process and its reaped children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def make_disk(path: Path, size: int, data: int, seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(data // MiB):
            f.write(rnd.randbytes(MiB))


def change(path: Path, share: float, data: int) -> None:
    """Rewrite ``share`` of the disk's data area in 64 KiB pieces."""
    with open(path, "r+b") as f:
        for _ in range(max(1, int(data * share) // 65536)):
            f.seek(random.randrange(0, data // 65536) * 65536)
            f.write(os.urandom(65536))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Writer(threading.Thread):
    """Rewrites 1 % of every disk once per period, spread over the period."""

    def __init__(self, disks: list[Path], data: int, period: float) -> None:
        super().__init__(daemon=True)
        self.disks, self.data, self.period = disks, data, period
        self.stop = threading.Event()

    def run(self) -> None:
        pause = self.period / len(self.disks)
        while not self.stop.is_set():
            for d in self.disks:
                change(d, 0.01, self.data)
                if self.stop.wait(pause):
                    return


def run_fleet(args: argparse.Namespace, workers: int, pg: Postgres, redis: RedisServer,
              s3: SeaweedFS, root: Path) -> dict[str, Any]:
    fleet = Fleet(root / f"w{workers}", pg, redis, s3, broker_db=workers + 1)
    data, size = args.data_mib * MiB, args.size_mib * MiB
    disks = []
    os.environ.update(fleet.extra_env)
    vault = Vault.open(fleet.main)
    policies.create_policy(vault, "fleet", crash_every=f"{args.every}s", rpo_threshold="5m", retention="2h")
    for i in range(args.machines):
        d = fleet.root / f"m{i:03d}.img"
        make_disk(d, size, data, seed=i)
        disks.append(d)
        inventory.add_source(vault, "image", f"m{i:03d}", {"paths": [str(d)]})
        policies.attach(vault, f"m{i:03d}", "fleet")
    try:
        worker_pids = [fleet.worker(f"worker{w}").pid for w in range(workers)]
        scheduler = fleet.scheduler(workers=args.machines)
        t0 = time.monotonic()
        ids = {m.id: m.name for m in inventory.list_machines(vault)}
        while True:  # the initial copies
            summaries = point_records.summaries(vault)
            if all(summaries.get(mid) and summaries[mid].points for mid in ids):
                break
            if fleet.died():
                raise SystemExit(f"{', '.join(fleet.died())} died: see {fleet.logs}")
            if time.monotonic() - t0 > 1800:
                raise SystemExit("initial copies took more than 30 minutes")
            time.sleep(1)
        initial_s = time.monotonic() - t0
        writer = Writer(disks, data, args.every)
        writer.start()
        time.sleep(args.every)  # the first deltas are under way: steady state from here
        start = datetime.now(UTC)
        cpu0 = sum(cpu_seconds(pid) for pid in worker_pids)
        sched0 = cpu_seconds(scheduler.pid)
        ages: list[float] = []
        end_at = time.monotonic() + args.seconds
        while time.monotonic() < end_at:
            now = datetime.now(UTC)
            for s in point_records.summaries(vault).values():
                if s.latest_time:
                    t = datetime.strptime(s.latest_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                    ages.append((now - t).total_seconds())
            time.sleep(5)
        cpu1 = sum(cpu_seconds(pid) for pid in worker_pids)
        sched1 = cpu_seconds(scheduler.pid)
        end = datetime.now(UTC)
        writer.stop.set()
        with vault.session() as s:
            jobs = list(s.scalars(select(JobRow).where(JobRow.kind == "replicate")))

        def ended_in(j: JobRow) -> bool:
            t = j.ended_at
            if t is None:
                return False
            t = t if t.tzinfo else t.replace(tzinfo=UTC)
            return start <= t <= end

        ok = [j for j in jobs if j.state == "succeeded" and ended_in(j)]
        failed = [j for j in jobs if j.state == "failed" and ended_in(j)]
        minutes = (end - start).total_seconds() / 60
        return {
            "workers": workers, "machines": args.machines, "initial_s": round(initial_s, 1),
            "cycles_per_min": round(len(ok) / minutes, 1), "failed": len(failed),
            "demand_per_min": round(args.machines * 60 / args.every, 1),
            "rpo_p50_s": round(statistics.median(ages), 1), "rpo_p95_s": round(percentile(ages, 0.95), 1),
            "rpo_max_s": round(max(ages), 1),
            "cpu_per_cycle_s": round((cpu1 - cpu0) / max(1, len(ok)), 3),
            "scheduler_cpu_per_min_s": round((sched1 - sched0) / minutes, 2),
            "window_s": round((end - start).total_seconds()),
        }
    finally:
        fleet.stop()
        vault.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=int, default=120, help="steady-state window per worker count")
    ap.add_argument("--every", type=int, default=30, help="crash-consistent interval, seconds")
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--data-mib", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rehost-fleet-") as tmp, Postgres() as pg, \
            RedisServer() as redis, SeaweedFS() as s3:
        for n in args.workers:
            r = run_fleet(args, n, pg, redis, s3, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs; {args.machines} machines, a cycle due every "
          f"{args.every}s each ({args.machines * 60 / args.every:.0f}/min), 1 % of {args.data_mib} MiB "
          f"rewritten per interval; steady state {args.seconds}s")
    print(f"{'workers':>7} {'initial s':>9} {'cycles/min':>10} {'failed':>6} {'RPO p50':>8} {'p95':>6} "
          f"{'max':>6} {'CPU s/cycle':>11} {'sched CPU s/min':>15}")
    for r in results:
        print(f"{r['workers']:>7} {r['initial_s']:>9} {r['cycles_per_min']:>10} {r['failed']:>6} "
              f"{r['rpo_p50_s']:>8} {r['rpo_p95_s']:>6} {r['rpo_max_s']:>6} {r['cpu_per_cycle_s']:>11} "
              f"{r['scheduler_cpu_per_min_s']:>15}")
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"{r['workers']} vs {base['workers']} workers: cycles/min x"
                  f"{r['cycles_per_min'] / max(base['cycles_per_min'], 0.1):.2f}, "
                  f"RPO p95 x{r['rpo_p95_s'] / max(base['rpo_p95_s'], 0.1):.2f}")


if __name__ == "__main__":
    main()
