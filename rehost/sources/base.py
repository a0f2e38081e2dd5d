"""The source-provider contract: how a service reads a machine's disks.

Each kind of source (image files, a running QEMU, the agent, vSphere, Hyper-V) is a thin
adapter; the replication services only see ``SourceProvider``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from rehost.replication.cycle import ReadableDisk
from rehost.repository.manifest import Consistency
from rehost.vault.models import MachineRow


class SourceProvider(Protocol):
    kind: str

    def open_disks(self, machine: MachineRow) -> AbstractContextManager[list[tuple[int, ReadableDisk]]]:
        """Open every disk of the machine for one cycle, as one instant where possible."""
        ...

    def consistency(self, machine: MachineRow) -> Consistency:
        """What a point read this way is; recorded in the point, never guessed later."""
        ...

    def describe(self, machine: MachineRow) -> dict[str, Any]:
        """Source metadata stored with each point."""
        ...

    def can_shutdown(self, machine: MachineRow) -> str | None:
        """None if the source machine can be shut down, else why not (capability query)."""
        ...

    def shutdown(self, machine: MachineRow, timeout: float) -> str:
        """Shut the source machine down before a failover; returns what happened."""
        ...
