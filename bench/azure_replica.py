"""Bytes written to an Azure replica page blob per cycle vs bytes changed, and whether the
delta grows with the disk (it must not): Azurite on loopback stands in for Azure.

    .venv/bin/python bench/azure_replica.py [--sizes-gib 1,8] [--data-mib 64] [--change 0.01]

Per disk size: a sparse raw image with ``data-mib`` of random data spread over the disk, a
first recovery point by ``run_cycle`` and its first sync (``sync_disk``) into a new page
blob; then ``change`` of the data's 4 KiB blocks rewritten at random, a second point, and
its sync. Prints bytes changed, bytes written, pages cleared, requests and seconds. Times are
Azurite's on loopback (no network, no throttling): they say what rehost costs, not what
Azure takes. Needs Azurite (scripts/install) and qemu-nbd. The report also goes to
bench/out/azure_replica.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rehost.disks import open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.storage import LocalStorage
from rehost.targets.azure.blob import BlobEndpoint, PageBlob
from rehost.targets.azure.pageblob import sync_disk
from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

MiB, GiB = 1 << 20, 1 << 30


def _one(
    az: Azurite, folder: Path, size: int, data: int, change: float, rng: random.Random
) -> dict[str, object]:
    image = folder / "disk.raw"
    regions = [rng.randrange(0, size - MiB) // MiB * MiB for _ in range(data // MiB)]
    with open(image, "wb") as f:
        f.truncate(size)
        for off in regions:
            f.seek(off)
            f.write(rng.randbytes(MiB))
    repo = Repository.create(LocalStorage.create(folder / "repo"))
    cache = DigestCache(folder / "cache")
    blob = PageBlob(BlobEndpoint(az.account_url, f"bench{size // GiB}",
                                 {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}), "disk0.vhd")
    with open_disk(probe(image)) as d:
        first = run_cycle(repo, cache, "m", [(0, d)], parent=None).point
    r1 = sync_disk(repo, first, 0, blob, last=None, journal_dir=folder / "j")
    blocks = rng.sample([off + k * 4096 for off in set(regions) for k in range(MiB // 4096)],
                        int(len(set(regions)) * MiB // 4096 * change))
    with open(image, "r+b") as f:
        for b in blocks:
            f.seek(b)
            f.write(rng.randbytes(4096))
    with open_disk(probe(image)) as d:
        second = run_cycle(repo, cache, "m", [(0, d)], parent=first).point
    t = time.monotonic()
    r2 = sync_disk(repo, second, 0, blob, last=first, journal_dir=folder / "j")
    return {"disk_gib": size / GiB, "first_sync": r1.to_json(), "changed_bytes": len(blocks) * 4096,
            "delta_sync": r2.to_json(), "delta_wall": round(time.monotonic() - t, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--sizes-gib", default="1,8")
    ap.add_argument("--data-mib", type=int, default=64)
    ap.add_argument("--change", type=float, default=0.01)
    args = ap.parse_args(argv)
    rows = []
    with Azurite() as az:
        for gib in (int(x) for x in args.sizes_gib.split(",")):
            with tempfile.TemporaryDirectory(prefix="rehost-bench-az-") as tmp:
                row = _one(az, Path(tmp), gib * GiB, args.data_mib * MiB, args.change, random.Random(gib))
            rows.append(row)
            d1, d2 = row["first_sync"], row["delta_sync"]
            assert isinstance(d1, dict) and isinstance(d2, dict)
            print(f"{gib} GiB disk, {args.data_mib} MiB data: first sync {d1['bytes_written']} B in "
                  f"{d1['requests']} requests, {d1['seconds']} s; delta: {row['changed_bytes']} B changed, "
                  f"{d2['bytes_written']} B written, {d2['pages_cleared']} pages cleared, "
                  f"{d2['requests']} requests, {d2['seconds']} s")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "azure_replica.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
