"""The replica disks of one machine: a page blob per disk, synced per point, materialized
at failover. What a future ``AzureTarget`` calls; nothing here knows about the vault.

- ``blob_name(machine, disk)``: the replica blob's name in the target's container.
- ``sync_point``: every disk of a recovery point, one ``sync_disk`` each (after each
  committed point, or on the policy's interval).
- ``materialize``: a blob of its own holding one point's disk, copied from the replica's
  snapshot of that point. Failover makes the managed disk from it (``createOption=Import``
  with ``sourceUri``): whether Import accepts a ``?snapshot=`` URL is not documented, a copy
  always works.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from rehost.errors import NotFound
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import Repository
from rehost.targets.azure.blob import PageBlob
from rehost.targets.azure.pageblob import Progress, SyncReport, point_snapshots, sync_disk


def blob_name(machine: str, disk: int) -> str:
    """``rehost-<machine>-disk<N>.vhd``, the machine name reduced to what blob names allow."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", machine).strip("-.") or "machine"
    return f"rehost-{safe[:200]}-disk{disk}.vhd"


def sync_point(
    repo: Repository,
    point: RecoveryPoint,
    open_blob: Callable[[int], PageBlob],
    *,
    journal_dir: Path,
    workers: int = 4,
    progress: Progress | None = None,
) -> list[SyncReport]:
    """Sync every disk of ``point`` into its replica blob (``open_blob(disk index)``); the
    point each blob held comes from the blob itself."""
    return [sync_disk(repo, point, d.index, open_blob(d.index), last=None, journal_dir=journal_dir,
                      workers=workers, progress=progress)
            for d in sorted(point.disks, key=lambda d: d.index)]


def materialize(replica: PageBlob, point_id: str, dest: PageBlob) -> str:
    """Copy the replica's snapshot of ``point_id`` into ``dest``; returns the snapshot id.
    ``NotFound`` if the replica has no snapshot of that point (not synced yet, or forgotten)."""
    snap = point_snapshots(replica).get(point_id)
    if snap is None:
        raise NotFound(f"the replica {replica.url} holds no snapshot of point {point_id[:12]}: "
                       f"sync it first")
    dest.copy_from(replica.source_url(snap))
    return snap
