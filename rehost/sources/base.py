"""The source-provider contract: how a service reads a machine's disks.

Each kind of source (image files, a running QEMU, the agent, vSphere, Hyper-V) is a thin
adapter; the replication services only see ``SourceProvider`` and the ``Snapshot`` it opens
for one cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rehost.disks.extent import Extent
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.spec import MachineSpec


@dataclass
class Snapshot:
    """One instant of all disks of a machine, open for reading during one cycle.

    ``changed`` holds, per disk index, the extents a change tracker says may differ from the
    parent point (None: unknown, the cycle hash-diffs the disk). ``metadata`` is stored in
    the recovery point (e.g. the dirty bitmap that starts at this instant). ``notes`` say
    why something fell back (a lost bitmap, a failed freeze); they reach the item's state.
    ``on_commit`` runs once the point is safely stored (e.g. drop the previous bitmap).
    """

    disks: list[tuple[int, ReadableDisk]]
    consistency: Consistency
    changed: dict[int, list[Extent] | None] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    on_commit: Callable[[RecoveryPoint], None] | None = None
    #: the instant the disks were frozen: the recovery point's time
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: per disk, the source's own 4 KiB digests of the whole disk as it will be read (a
    #: source that computes them anyway, the agent): a retry skips what a cut try stored
    expected: dict[int, bytes] | None = None


class SourceProvider(Protocol):
    """One opened source. Every operation takes the machine as a frozen ``MachineSpec`` (the
    vault's id in ``machine.id`` names bitmaps and digest caches): never a database row."""

    kind: str

    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> AbstractContextManager[Snapshot]:
        """Open every disk of the machine at one instant for one cycle.

        ``app_consistent`` asks for the guest's file systems to be frozen around that
        instant; a source that cannot do it returns a crash-consistent (or weaker) snapshot
        and says why in ``notes`` — the consistency is recorded, never guessed.
        """
        ...

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        """None if the source machine can be shut down, else why not (capability query)."""
        ...

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        """Shut the source machine down before a failover, keeping its disks readable for the
        final sync where the source can; returns what happened."""
        ...

    def release(self, machine: MachineSpec) -> str | None:
        """After the final sync of a shut-down source: let it go (e.g. QEMU quits)."""
        ...

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        """Replication has ended for good: remove change tracking from the source."""
        ...
