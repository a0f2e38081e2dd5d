"""Replicating machines into recovery points and finding points again."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime

from rehost.errors import NotFound, RehostError, UsageError
from rehost.jobs import leases
from rehost.replication.cycle import CycleResult, Resume, run_cycle
from rehost.replication.retention import PointTime, RetentionPolicy, points_to_keep
from rehost.replication.throttle import throttled
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.prune import PruneReport, prune
from rehost.repository.storage import ThrottledStorage
from rehost.vault import agents, cycle_history, point_records
from rehost.vault.inventory import get_machine, provider_for, set_state, spec_of
from rehost.vault.models import MachineRow
from rehost.vault.point_records import PointRecord
from rehost.vault.states import ItemState as S
from rehost.vault.states import require
from rehost.vault.vault import Vault


def replicate(
    vault: Vault,
    name: str,
    progress: Callable[[int, int], None] | None = None,
    *,
    app_consistent: bool = False,
    bandwidth_bps: int | None = None,
) -> CycleResult:
    """One cycle: the first copies everything, later ones only what changed.

    The machine is held for the cycle (another operation on it is refused with the reason);
    other machines replicate at the same time, each cycle through its own repository
    writer. ``bandwidth_bps`` caps what the cycle reads from the source and what it writes
    to the repository.
    """
    machine = get_machine(vault, name)
    require("replicate", machine.state, name, machine.state_reason)
    with leases.machine(vault, machine.id, name, "replicate"), leases.writing(vault, "replicate", machine.id):
        started = time.monotonic()
        try:
            result = _cycle(vault, machine, progress, app_consistent, bandwidth_bps)
        except Exception as e:
            _history(vault, machine.id, time.monotonic() - started, error=e)
            raise
        _history(vault, machine.id, time.monotonic() - started, result=result)
        return result


def _history(vault: Vault, machine_id: str, seconds: float, *, result: CycleResult | None = None,
             error: Exception | None = None) -> None:
    """The cycle's row in the per-cycle history (the item page's charts). A convenience: a
    cycle never fails for it (its point is stored, or its own error is on the way)."""
    with suppress(Exception):
        if result is not None:
            p = result.point
            cycle_history.record(vault, machine_id, seconds=seconds, changed_bytes=result.changed_bytes,
                                 stored_bytes=result.stats.stored_bytes, point=p.id, point_time=p.time,
                                 consistency=p.consistency.value)
        else:
            msg = str(error) if isinstance(error, RehostError) else f"{type(error).__name__}: {error}"
            cycle_history.record(vault, machine_id, seconds=seconds, error=msg)


def _cycle(
    vault: Vault, machine: MachineRow, progress: Callable[[int, int], None] | None,
    app_consistent: bool, bandwidth_bps: int | None,
) -> CycleResult:
    name = machine.name
    machine = get_machine(vault, name)  # as it is now that we hold it
    require("replicate", machine.state, name, machine.state_reason)
    machine = agents.sync_disks(vault, machine)  # a physical machine's disks come with its agent
    provider = provider_for(machine, vault)
    repo = vault.repo
    storage = ThrottledStorage(repo.storage, bandwidth_bps) if bandwidth_bps else None
    with repo.writer(storage) as writer:
        parent = point_records.latest(vault, machine.id)  # the records, not every manifest
        total = sum(d.size for d in machine.disks)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        if parent is None:
            set_state(vault, machine, S.INITIAL_REPLICATION, "first full copy in progress")
        with provider.snapshot(spec_of(machine), parent, app_consistent=app_consistent) as snap:
            resume = Resume.of(vault.cache, machine.id, parent, snap.expected)
            # a crash between the manifest and its record leaves this mark: the next reader syncs
            point_records.mark(vault, [machine.id])
            try:
                result = run_cycle(
                    repo, vault.cache, machine.id, throttled(snap.disks, bandwidth_bps), parent=parent,
                    consistency=snap.consistency, source=snap.metadata, progress=step,
                    changed=snap.changed, taken_at=snap.taken_at, resume=resume, writer=writer,
                )
                point_records.record(vault, result.point, unmark=True)
            except Exception:  # it may have stored its manifest: settle that now, not in a listing
                with suppress(Exception):
                    point_records.sync(vault, vouch=[machine.id])
                raise
            if snap.on_commit:
                snap.on_commit(result.point)
        result.notes = snap.notes
        if machine.state != S.TEST_FAILOVER:  # a test failover goes on while we replicate
            set_state(vault, machine, S.PROTECTED, "; ".join(snap.notes))
        return result


def list_points(vault: Vault, name: str) -> list[RecoveryPoint]:
    """A machine's points, oldest first, manifests decoded (its disk maps included): the
    records after a sync say which, so only this machine's manifests are read."""
    return [vault.repo.load_point_exact(r.id) for r in point_list(vault, name)]


def point_list(vault: Vault, name: str) -> list[PointRecord]:
    """A machine's points as the records hold them (id, time, consistency, sequence, disk
    sizes), oldest first, after a sync: the repository's word without decoding the
    manifests already recorded."""
    machine = get_machine(vault, name)
    point_records.sync(vault)
    return point_records.records(vault, machine.id)


def find_point(vault: Vault, name: str, spec: str) -> RecoveryPoint:
    """``latest``, ``latest-app-consistent``, ``latest-processed``, or an id (prefix).
    Chosen among the records (after a sync); only the chosen manifest is decoded."""
    return vault.repo.load_point_exact(_find(vault, name, spec).id)


def _find(vault: Vault, name: str, spec: str) -> PointRecord:
    points = point_list(vault, name)
    if not points:
        raise NotFound(f"{name} has no recovery points yet (run: rehost replicate {name})")
    if spec in ("latest", "latest-processed"):
        return points[-1]
    if spec == "latest-app-consistent":
        app = [p for p in points if p.consistency == Consistency.APP]
        if not app:
            raise NotFound(f"{name} has no app-consistent recovery point")
        return app[-1]
    if len(spec) < 4 or any(c not in "0123456789abcdef" for c in spec):
        raise UsageError(
            f"{spec!r} is not a point: use latest, latest-processed, latest-app-consistent or an id"
        )
    matches = [p for p in points if p.id.startswith(spec)]
    if not matches:
        raise NotFound(f"{name} has no recovery point {spec!r} (see: rehost points {name})")
    if len(matches) > 1:
        raise UsageError(f"point id {spec!r} is ambiguous; give more characters")
    return matches[0]


def prune_vault(
    vault: Vault, policy: RetentionPolicy | None = None, now: datetime | None = None
) -> PruneReport:
    """Apply retention to every machine, then delete what no point needs (alone among writers;
    points being read are kept). Retention decides from the point records, synced with the
    repository first (no writer runs now, so the listing holds still)."""
    policy = policy or RetentionPolicy()
    now = now or datetime.now(UTC)
    with leases.pruning(vault):
        point_records.sync(vault, pruning=True)
        forget: set[str] = set()
        touched: set[str] = set()
        for machine_id, points in point_records.records_by_machine(vault, disks=False).items():
            times = [PointTime(p.id, point_time(p), p.consistency == Consistency.APP) for p in points]
            gone = {p.id for p in points} - points_to_keep(times, policy, now)
            if gone:
                forget |= gone
                touched.add(machine_id)
        with point_records.changing(vault, touched):
            return prune(vault.repo, forget, reading=leases.points_being_read(vault))


def point_time(p: RecoveryPoint | PointRecord) -> datetime:
    """When the point was taken, as a time (the manifests keep a UTC string)."""
    return datetime.strptime(p.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
