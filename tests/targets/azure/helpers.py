"""Points from image files, and the check that a replica blob is exactly a point."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from rehost.disks import open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import Repository
from rehost.targets.azure.blob import PageBlob
from rehost.targets.azure.vhd import FOOTER_SIZE, check_fixed_vhd, padded_size
from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY

MiB = 1 << 20


def key_credential() -> dict[str, str]:
    return {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}


def scatter(path: Path, fraction: float, seed: int, block: int = 4096) -> int:
    """Overwrite ``fraction`` of the 4 KiB blocks of ``path`` at random places; bytes changed."""
    rng = random.Random(seed)
    size = path.stat().st_size
    blocks = rng.sample(range(size // block), int(size // block * fraction))
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * block)
            f.write(rng.randbytes(block))
    return len(blocks) * block


class Points:
    """A repository on disk and the points run_cycle makes of one image file."""

    def __init__(self, folder: Path, image: Path) -> None:
        from rehost.repository.storage import LocalStorage

        self.folder, self.image = folder, image
        self.repo = Repository.create(LocalStorage.create(folder / "repo"))
        self.cache = DigestCache(folder / "cache")
        self.points: list[RecoveryPoint] = []

    def cycle(self) -> RecoveryPoint:
        with open_disk(probe(self.image)) as d:
            p = run_cycle(self.repo, self.cache, "m", [(0, d)],
                          parent=self.points[-1] if self.points else None).point
        self.points.append(p)
        return p


def check_replica(blob: PageBlob, repo: Repository, point: RecoveryPoint, folder: Path,
                  snapshot: str | None = None, disk: int = 0) -> None:
    """The blob (or its snapshot) is a fixed VHD that qemu-img reads at the exact padded size,
    and its data part equals the point's export, by qemu-img compare."""
    size = next(d.size for d in point.disks if d.index == disk)
    padded = padded_size(size)
    whole = blob.read(0, padded + FOOTER_SIZE, snapshot)
    assert len(whole) == padded + FOOTER_SIZE
    check_fixed_vhd(whole[padded:], len(whole))
    vhd = folder / "replica.vhd"
    vhd.write_bytes(whole)
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", str(vhd)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["virtual-size"] == padded
    data = folder / "replica.raw"
    data.write_bytes(whole[:padded])
    export = folder / "export.raw"
    with open(export, "wb") as f:
        f.truncate(padded)
        for off, _n, piece in repo.iter_disk(point, disk):
            if piece is not None:
                f.seek(off)
                f.write(piece)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(data), str(export)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(vhd), str(export)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def slow_sync_main(repo_path: str, point_id: str, account_url: str, container: str, journal: str) -> None:
    """The child of the kill -9 test: a sync whose page writes take 20 ms more each, so the
    parent can kill it half way (run as ``python -c``)."""
    import time

    from rehost.repository.storage import LocalStorage
    from rehost.targets.azure.blob import BlobEndpoint
    from rehost.targets.azure.pageblob import sync_disk
    class Slow(PageBlob):
        def put(self, offset: int, data: bytes) -> None:
            time.sleep(0.02)
            super().put(offset, data)

    repo = Repository.open(LocalStorage(repo_path))
    blob = Slow(BlobEndpoint(account_url, container, key_credential()), "disk0.vhd")
    sync_disk(repo, repo.load_point_exact(point_id), 0, blob, last=None, journal_dir=Path(journal), workers=1)
