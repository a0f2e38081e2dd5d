"""The target-provider contract: where a failed-over machine runs.

A target declares what it can do (``Capabilities``, asked apart from doing it, as nbdcopy
keeps capability queries apart from operations) and the failover services assemble their
plans from that (``rehost.vault.failover``):

- ``boots_from_nbd`` (the local QEMU host, instant recovery): the service serves each disk
  of the recovery point over NBD, ``create`` makes machine disks backed by those exports,
  the machine starts at once and ``hydrate`` copies the data in while it runs;
- ``stages_disks`` (upload-then-boot, such as Azure): ``stage_disk`` receives each disk's
  data from the point first, then ``create`` builds the machine from the staged disks.

Operations take frozen values: the ``MachineSpec`` the source discovered, the chosen network,
and the ``Placement`` that ``create``/``start`` return, which the services persist and hand
back. Every operation is idempotent: run twice (a job resumed after a kill -9 re-runs the
step that was cut short) it finds what it already made and does not make it again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from rehost.spec import MachineSpec

if TYPE_CHECKING:
    from rehost.repository.manifest import RecoveryPoint
    from rehost.repository.repository import Repository

#: (offset, length, data or None for zeros), in offset order, covering a whole disk; what
#: ``Repository.iter_disk(point, disk)`` yields
Extent = tuple[int, int, bytes | None]
Progress = Callable[[int, int], None]
#: where a boot verdict comes from: a serial console the target reads (local QEMU, Azure's
#: boot diagnostics serial log) or the target's own emulation (the in-memory test double)
VerdictSource = Literal["serial-console", "boot-diagnostics", "emulated"]


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    checks: list[VerifyCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


@dataclass(frozen=True)
class Capabilities:
    """What a kind of target can do; the failover plans are built from this, never from a
    kind name."""

    #: boot straight from a point served over NBD, copy the data in after the start
    boots_from_nbd: bool = False
    #: the disks are copied into the target (``stage_disk``) before the machine is created
    stages_disks: bool = False
    #: the network a test failover runs on (one that reaches nothing); None: no test failover
    test_network: str | None = None
    #: where ``boot_verdict`` reads the guest's word that it booted
    verdict: VerdictSource = "serial-console"
    #: ``stage_disk`` writes in multiples of this (Azure page blobs: 512)
    stage_alignment: int = 512
    #: keeps a copy of every replicated disk in sync with the recovery points
    #: (``ReplicaKeeper.sync_replica`` after each committed point), so a failover stages
    #: only what changed since the last sync instead of uploading whole disks
    keeps_replicas: bool = False

    def __post_init__(self) -> None:
        if self.boots_from_nbd == self.stages_disks:
            raise ValueError("a target either boots from NBD or stages disks, exactly one")

    def to_json(self) -> dict[str, Any]:
        return {"boots_from_nbd": self.boots_from_nbd, "stages_disks": self.stages_disks,
                "test_network": self.test_network, "verdict": self.verdict,
                "stage_alignment": self.stage_alignment, "keeps_replicas": self.keeps_replicas}


@dataclass(frozen=True)
class TargetNetwork:
    """A network the target offers (local: production, isolated; Azure: subnets)."""

    name: str
    #: reaches nothing outside the machine's own network: fit for a test failover
    isolated: bool = False
    description: str = ""


@dataclass(frozen=True)
class PointDisk:
    """One disk of a recovery point, as a target receives it.

    ``point`` names the recovery point, so a target that keeps replicas of its own (Azure's
    page blobs with a snapshot per point) can find its copy instead of reading the data
    again. ``uri`` is the NBD export serving it, for targets that boot from NBD.
    """

    index: int
    size: int
    point: str
    uri: str | None = None
    #: the replicated item's name, under which a ``keeps_replicas`` target keeps its copy
    machine: str = ""
    #: the format of what ``uri`` names: raw for a point's export; qcow2 for a copy with
    #: fix-ups (an overlay file on the export, ``rehost.vault.fixup``)
    format: str = "raw"


@dataclass(frozen=True)
class Placement:
    """Where a machine runs on a target: returned by ``create``/``start``, persisted by the
    services (job outputs, the machine's placement) and handed back to the target."""

    #: the machine's name on the target
    vm: str
    #: what an operator looks at: a folder, a resource id
    location: str
    #: the network it was started on, None before ``start``
    network: str | None = None
    #: where its console can be read, if anywhere
    console: str | None = None
    #: the target's own facts (pid, resource ids), JSON-compatible strings and numbers
    details: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "location": self.location, "network": self.network,
                "console": self.console, "details": dict(self.details)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Placement:
        return cls(str(d["vm"]), str(d["location"]), d.get("network"), d.get("console"),
                   dict(d.get("details") or {}))


@dataclass(frozen=True)
class Peer:
    """Another machine that one being started must reach on its network (a recovery plan's
    earlier group): the guest's connections to the peer's ``port`` are carried to
    ``host:host_port``, the peer's endpoint as the rehost host sees it. Targets whose
    machines share a network by themselves (Azure: one virtual network) need none."""

    name: str
    port: int
    host: str
    host_port: int


@runtime_checkable
class Target(Protocol):
    """A target provider. Built by its kind's factory in ``rehost.targets.registry``."""

    kind: str

    # -- queries ------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities: ...

    def networks(self) -> Sequence[TargetNetwork]:
        """The networks machines can be started on; the network map is checked against it."""
        ...

    def verify(self, needed_bytes: int = 0) -> VerifyReport:
        """Check compute, storage and network prerequisites; never changes anything."""
        ...

    def find(self, vm: str) -> Placement | None:
        """The machine named ``vm`` this target made, if any (running or not)."""
        ...

    def is_running(self, placement: Placement) -> bool: ...

    def check_machine(self, spec: MachineSpec) -> list[VerifyCheck]:
        """The target's limits for this machine (disk sizes, disk count, firmware), each a
        named check; checked before replication starts and before a failover."""
        ...

    # -- operations -----------------------------------------------------------------------

    def stage_disk(self, vm: str, disk: PointDisk, data: Iterable[Extent],
                   progress: Progress | None = None, *, spec: MachineSpec | None = None) -> None:
        """``stages_disks`` targets: copy one disk of the point in (zeros need not be
        written). ``data`` is lazy: a target that already holds ``disk.point`` need not read
        it. ``spec``: the machine the disk belongs to (Azure makes a boot disk of its
        firmware's generation). Targets that boot from NBD raise ``InvalidState``."""
        ...

    def create(self, spec: MachineSpec, vm: str, disks: Sequence[PointDisk]) -> Placement:
        """Make the machine (not started): from the NBD URIs of ``disks`` or the disks
        staged for ``vm``."""
        ...

    def start(self, placement: Placement, network: str, *, ports: Sequence[int] = (),
              peers: Sequence[Peer] = ()) -> Placement:
        """Start it on ``network`` (a no-op if it runs); the placement says where it runs.
        ``ports``: guest TCP ports the checks will reach (``endpoint``); ``peers``: machines
        it must reach where the network alone does not carry it there."""
        ...

    def endpoint(self, placement: Placement, port: int) -> tuple[str, int] | None:
        """Where the rehost host reaches the guest's TCP ``port`` (a forwarded port, a private
        address), or None when it cannot: the checks then fail saying so."""
        ...

    def boot_verdict(self, placement: Placement, pattern: str, timeout: float) -> str:
        """The first match of ``pattern`` that the booted guest shows; ``InvalidState`` with
        what it showed instead when there is none within ``timeout`` seconds."""
        ...

    def hydrate(self, placement: Placement, progress: Progress | None = None) -> None:
        """``boots_from_nbd`` targets: copy every backing byte in, after which the machine
        no longer needs the NBD exports. Other targets: nothing to do."""
        ...

    def stop(self, placement: Placement, graceful_timeout: float = 30.0) -> None: ...

    def remove(self, placement: Placement) -> None:
        """Stop the machine and delete everything the target made for it."""
        ...


@dataclass(frozen=True)
class ReplicaSync:
    """What one ``sync_replica`` did (no secret in it: URLs without their query)."""

    point: str
    bytes_written: int
    requests: int
    retries: int
    seconds: float
    #: points whose copies were dropped because the repository no longer has them
    forgotten: int = 0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point, "bytes_written": self.bytes_written, "requests": self.requests,
                "retries": self.retries, "seconds": round(self.seconds, 3), "forgotten": self.forgotten,
                "note": self.note}


@runtime_checkable
class ReplicaKeeper(Protocol):
    """What a ``keeps_replicas`` target adds: a copy of each disk of a machine, brought to a
    recovery point after it is committed. The repository is handed in, not opened: the
    target reads the points' manifests to write only what changed."""

    def sync_replica(self, machine: str, point: RecoveryPoint, repo: Repository, *,
                     keep: Collection[str], journal_dir: Path,
                     progress: Progress | None = None) -> ReplicaSync:
        """Bring ``machine``'s copy to ``point`` (resuming a cut sync, writing only what
        changed) and forget the copies of points not in ``keep`` (retention dropped them)."""
        ...

    def has_replica_point(self, machine: str, point: RecoveryPoint) -> bool:
        """Every disk of ``point`` is held (a failover to it needs no sync)."""
        ...

    def drop_replicas(self, machine: str, disks: Sequence[int]) -> str:
        """Delete the copies (complete migration); the machines made from them stay."""
        ...


def network_names(target: Target) -> list[str]:
    return [n.name for n in target.networks()]
