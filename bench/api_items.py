#!/usr/bin/env python3
"""Benchmark (not a test): how long the dashboard's items list takes to render with 500 items.

A vault gets N machines (rows inserted directly through the models, which is fast), half of
them under a policy, each with a recorded last cycle; then the page /ui/items (and the JSON
/api/v1/machines) is requested through FastAPI's TestClient, server side only: no network,
no browser. The figure is the median of ``--repeat`` requests after two warm-up requests.

    .venv/bin/python bench/api_items.py [--items 500] [--repeat 20] [--points 0]

``--points K`` also gives every item K real recovery points (replicating a 64 KiB image),
because the list reads every point manifest from the repository: that cost grows with
points, not with rows. Target: under 200 ms for 500 items.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastapi.testclient import TestClient
from harness import machine

from rehost.api.tokens import create_token
from rehost.portal.app import create_app
from rehost.vault import policies, protection
from rehost.vault.models import DiskRow, MachineRow, SourceRow
from rehost.vault.vault import Vault

TARGET_MS = 200.0


def populate(root: Path, items: int, points: int) -> str:
    """A vault with ``items`` machines; returns a reader token."""
    vault = Vault.init(root / "vault")
    try:
        gold = policies.create_policy(vault, "gold", rpo_threshold="5m")
        disk = root / "disk.raw"
        with open(disk, "wb") as f:
            f.write(b"\1" * 65536)
        now = datetime.now(UTC).isoformat()
        with vault.session() as s, s.begin():
            for i in range(items):
                src = SourceRow(name=f"vm{i:04d}", kind="image", settings={"paths": [str(disk)]})
                m = MachineRow(name=f"vm{i:04d}", source=src, state="protected" if points else "registered",
                               policy_id=gold.id if i % 2 == 0 else None,
                               last_cycle={"time": now, "seconds": 1.5, "error": ""})
                m.disks = [DiskRow(index=0, path=str(disk), format="raw", size=65536)]
                s.add_all([src, m])
        for i in range(items):
            for _ in range(points):
                protection.replicate(vault, f"vm{i:04d}")
        return create_token(vault, "bench", "reader")[1]
    finally:
        vault.close()


def timed(client: TestClient, url: str, repeat: int) -> tuple[float, float, int]:
    """(median ms, max ms, bytes) of ``repeat`` requests after two warm-ups."""
    for _ in range(2):
        assert client.get(url).status_code == 200
    times, size = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text[:200]
        size = len(r.content)
    return statistics.median(times), max(times), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--points", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.perf_counter()
        token = populate(root, args.items, args.points)
        setup = time.perf_counter() - t
        with TestClient(create_app(root / "vault")) as client:
            client.cookies.set("rehost_token", token)
            page = timed(client, "/ui/items", args.repeat)
            client.headers["Authorization"] = f"Bearer {token}"
            api = timed(client, "/api/v1/machines", args.repeat)
        about = machine(root)
    verdict = "meets" if page[0] < TARGET_MS else "MISSES"
    for k, v in about.items():
        print(f"- {k}: {v}")
    print(f"- python {platform.python_version()}; {args.items} items, {args.points} point(s) each "
          f"(vault made in {setup:.1f}s); median of {args.repeat} requests after 2 warm-ups\n")
    print("| request | median | max | response |")
    print("|---|---|---|---|")
    print(f"| GET /ui/items (HTML page) | {page[0]:.1f} ms | {page[1]:.1f} ms | {page[2] // 1024} KiB |")
    print(f"| GET /api/v1/machines (JSON) | {api[0]:.1f} ms | {api[1]:.1f} ms | {api[2] // 1024} KiB |")
    print(f"items page {verdict} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
