#!/usr/bin/env python3
"""Benchmark (not a test): does a scheduler tick, or the item list, cost more when every
machine keeps more recovery points? (docs/benchmarks.md, "Scheduler tick and item list
against history".)

For each points-per-machine figure (10 and 1,000 by default) a fresh vault gets N machines,
each a tiny sparse image replicated once by a real cycle; its other points are real
manifests written through the repository's own API (``save_point``: the real point's disk
maps at earlier times, a minute apart), which is what thousands of cycles would leave
behind, minus the waiting. The records are then built from the manifests, as an upgraded
vault gets them (``point_records.sync``, timed: a one-time cost). Half the machines have a
policy under which nothing is due, so a tick starts no cycle.

Measured, the median of ``--repeat`` runs after one warm-up:
- ``tick``: one ``Scheduler.tick`` (heartbeat file, machines and policies, summaries, due
  decisions; retention not due);
- ``list``: ``overview.machine_views`` (``rehost machines --json``, ``GET /api/v1/machines``);
- ``retention decision``: what the scheduler reads every 10 minutes to apply retention
  (every point's time, from the records: grows with points by nature, no manifest decoded);
- and, for comparison, what tick and list read before the records: ``repo.list_points()``
  cold (a fresh process decodes every manifest) and warm (decoded copies cached: the listing
  of the points folder and a sort remain).

    .venv/bin/python bench/scheduler_tick.py [--machines 20] [--points 10 1000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import delete, update

from rehost.vault import inventory, overview, point_records, policies, protection
from rehost.vault.models import PointRecordRow, PointSummaryRow
from rehost.vault.scheduler import Scheduler
from rehost.vault.vault import Vault

KiB = 1024
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def populate(root: Path, machines: int, points: int) -> float:
    """A vault with ``machines`` machines of ``points`` points each; returns the seconds the
    records took to build from the manifests."""
    vault = Vault.init(root)
    try:
        policies.create_policy(vault, "calm", rpo_threshold="2h", crash_every="1h")
        for i in range(machines):
            disk = root.parent / f"disk{i:03d}.raw"
            with open(disk, "wb") as f:
                f.truncate(256 * KiB)
                f.seek(64 * KiB)
                f.write(os.urandom(16 * KiB))
            name = f"vm{i:03d}"
            inventory.add_image_source(vault, name, [disk])
            if i % 2 == 0:
                policies.attach(vault, name, "calm")
            real = protection.replicate(vault, name).point
            when = datetime.strptime(real.time, STAMP)
            with vault.repo.writer() as w:
                for k in range(1, points):
                    w.save_point(replace(real, id="", parent=None, sequence=0,
                                         time=(when - timedelta(minutes=k)).strftime(STAMP)))
        # as an upgraded vault: no records yet, every machine marked
        with vault.session() as s, s.begin():
            s.execute(delete(PointRecordRow))
            s.execute(update(PointSummaryRow).values(points=0, latest_id=None, latest_time=None,
                                                     latest_app_id=None, latest_app_time=None, dirty=1))
    finally:
        vault.close()
    vault = Vault.open(root)
    try:
        started = time.perf_counter()
        point_records.summaries(vault)  # the first reader rebuilds
        return time.perf_counter() - started
    finally:
        vault.close()


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median, max) milliseconds of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def measure(root: Path, machines: int, points: int, repeat: int) -> dict[str, Any]:
    rebuild_s = populate(root, machines, points)
    out: dict[str, Any] = {"machines": machines, "points_per_machine": points,
                           "rebuild_s": round(rebuild_s, 3)}
    vault = Vault.open(root)
    try:
        now = time.time()
        sched = Scheduler(vault)
        sched._last_retention = now + 10**9  # retention is not due: the tick's reads only

        def tick() -> None:
            results = sched.tick()
            assert results == [], results  # nothing due: no cycle in the measurement

        out["tick_ms"] = median_ms(tick, repeat)
        sched.close()
        views = overview.machine_views(vault)
        assert all(v["points"] == points for v in views), [v["points"] for v in views]
        out["list_ms"] = median_ms(lambda: overview.machine_views(vault), repeat)
        items = [(m, m.policy) for m in inventory.list_machines(vault) if m.policy is not None]
        decide = Scheduler(vault)
        out["retention_decision_ms"] = median_ms(lambda: decide._due_to_go(items, now), max(3, repeat // 4))
        decide.close()
    finally:
        vault.close()
    # before the records: tick and list each began with repo.list_points()
    cold = []
    for _ in range(3):
        vault = Vault.open(root)
        try:
            t = time.perf_counter()
            n = len(vault.repo.list_points())
            cold.append((time.perf_counter() - t) * 1000)
            assert n == machines * points
            out["old_list_points_warm_ms"] = median_ms(vault.repo.list_points, max(3, repeat // 4))
        finally:
            vault.close()
    out["old_list_points_cold_ms"] = (statistics.median(cold), max(cold))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=20)
    ap.add_argument("--points", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=None, help="an empty folder (default: a temp dir)")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="rehost-tick-") as tmp:
        for p in args.points:
            print(f"{args.machines} machines x {p} points ...", flush=True)
            runs.append(measure(Path(tmp) / f"p{p}" / "vault", args.machines, p, args.repeat))
    print()
    print(f"{'points/machine':>14} {'tick ms':>9} {'list ms':>9} {'retention ms':>13} "
          f"{'rebuild s':>10} {'old cold ms':>12} {'old warm ms':>12}")
    for r in runs:
        print(f"{r['points_per_machine']:>14} {r['tick_ms'][0]:>9.2f} {r['list_ms'][0]:>9.2f} "
              f"{r['retention_decision_ms'][0]:>13.1f} {r['rebuild_s']:>10.2f} "
              f"{r['old_list_points_cold_ms'][0]:>12.1f} {r['old_list_points_warm_ms'][0]:>12.1f}")
    first, last = runs[0], runs[-1]
    ratios = {key: last[key][0] / first[key][0] for key in
              ("tick_ms", "list_ms", "retention_decision_ms", "old_list_points_cold_ms",
               "old_list_points_warm_ms")}
    print()
    print(f"{last['points_per_machine']} vs {first['points_per_machine']} points per machine: "
          + ", ".join(f"{k.removesuffix('_ms')} x{v:.2f}" for k, v in ratios.items()))
    report = {"when": datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
              "cpus": os.cpu_count(), "runs": runs, "ratios": ratios}
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "scheduler_tick.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {out_dir / 'scheduler_tick.json'}")


if __name__ == "__main__":
    main()
