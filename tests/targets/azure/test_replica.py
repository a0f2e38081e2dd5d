"""A machine's replica disks: every disk of a point synced, one point materialized as a blob of
its own (what failover imports), on a real Azurite."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from rehost.disks import open_disk, probe
from rehost.errors import NotFound
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import Repository
from rehost.repository.storage import LocalStorage
from rehost.targets.azure.blob import BlobEndpoint, PageBlob
from rehost.targets.azure.replica import blob_name, materialize, sync_point
from rehost.testkit.azurite import Azurite
from tests.targets.azure.helpers import MiB, check_replica, key_credential, scatter


def test_blob_names() -> None:
    assert blob_name("web 1", 0) == "rehost-web-1-disk0.vhd"
    assert blob_name("../..", 2) == "rehost-machine-disk2.vhd"


def test_sync_every_disk_and_materialize_a_point(azurite: Azurite, container: str, tmp_path: Path) -> None:
    images = [tmp_path / "d0.raw", tmp_path / "d1.raw"]
    for i, image in enumerate(images):
        with open(image, "wb") as f:
            f.truncate((8 + 5 * i) * MiB + 1024)
        scatter(image, 0.03, seed=i)
    repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
    cache = DigestCache(tmp_path / "cache")

    def cycle(parent: RecoveryPoint | None) -> RecoveryPoint:
        with contextlib.ExitStack() as stack:
            disks = [(i, stack.enter_context(open_disk(probe(p)))) for i, p in enumerate(images)]
            return run_cycle(repo, cache, "web 1", disks, parent=parent).point

    endpoint = BlobEndpoint(azurite.account_url, container, key_credential())

    def open_blob(disk: int) -> PageBlob:
        return PageBlob(endpoint, blob_name("web 1", disk), backoff=0.01)

    a = cycle(None)
    first = sync_point(repo, a, open_blob, journal_dir=tmp_path / "j")
    assert [r.point for r in first] == [a.id, a.id] and all(r.bytes_written > 0 for r in first)
    scatter(images[1], 0.02, seed=7)
    b = cycle(a)
    second = sync_point(repo, b, open_blob, journal_dir=tmp_path / "j")
    assert second[0].pages_written == 0 and second[1].pages_written > 0

    # Failover to the older point: its disk 1 copied out of the replica's snapshot.
    dest = PageBlob(endpoint, "failover-web-1-disk1.vhd")
    snap = materialize(open_blob(1), a.id, dest)
    assert snap == first[1].snapshot
    check_replica(dest, repo, a, tmp_path, disk=1)
    check_replica(open_blob(1), repo, b, tmp_path, disk=1)  # the replica itself moved on
    with pytest.raises(NotFound, match="sync it first"):
        materialize(open_blob(0), "0" * 64, dest)
