"""Source ``qemu``: a RUNNING QEMU VM (or qemu-storage-daemon), replicated while it runs.

Why this shape (design §3): the guest must keep running while a cycle reads, and a point
must be one instant of all disks. Per cycle, one QMP ``transaction`` atomically (1) adds a
new dirty bitmap per disk (persistent where the image can keep it: qcow2 v3), (2) disables
the bitmap that started at the parent point, and (3) starts a ``blockdev-backup
sync=none`` into a temporary qcow2 overlay of each disk (backup fleecing: QEMU copies old
data aside before the guest overwrites it). Reading the overlay through QEMU's own NBD
server gives the disks as they were at the transaction; the disabled bitmap, exported next
to it (QEMU finds it on the overlay's backing), says what changed since the parent, so a
delta cycle reads only that. See ``qemu_cbt`` for the bitmap rules and the fallbacks (lost
or inconsistent bitmap => hash-diff, with a note).

Talking to QEMU: QMP over a UNIX socket of rehost's own; which nodes are the disks, and
under which stable names, is ``qemu_qmp``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rehost.disks import BASE_ALLOCATION, Extent, NbdDisk, open_nbd
from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import UsageError
from rehost.guest.agent import GuestFreezer
from rehost.replication.reading import ReadableDisk
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources.base import Snapshot
from rehost.sources.qemu_cbt import (
    DiskPlan,
    FleeceSession,
    bitmap_name,
    machine_tag,
    make_workdir,
    node_bitmaps,
    parse_bitmap,
    plan_disk,
    remove_bitmaps,
    remove_workdir,
    union_extents,
)
from rehost.sources.qemu_qmp import QemuDisk, commands, connect_qmp, list_disks
from rehost.spec import MachineSpec

#: Bitmap granularity. Measured on QEMU 7.2 (test_granularity_cost: 496 scattered 4 KiB
#: writes on 256 MiB; and 4954 on 1 GiB): a delta cycle reads 1.0x what was written at
#: 4 KiB, 4.0x/3.9x at 16 KiB, 15.1x/13.9x at 64 KiB (stored bytes are the same: the cycle
#: diffs 4 KiB blocks; cycle time here was equal, the reads came from the page cache).
#: Those reads hit the protected VM's own storage, and under random writes a coarse bitmap
#: approaches a full-disk read per cycle. The price of 4 KiB is QEMU memory: 32 MiB per TiB
#: of disk per bitmap (measured: +34 MiB virtual, +37 MiB resident once writes are spread
#: over a 1 TiB disk; 64 KiB: 2 MiB), two bitmaps during a cycle. Multi-TiB disks on a
#: tight host can choose 16 or 64 KiB (source setting ``granularity``).
DEFAULT_GRANULARITY = 4096
class QemuSource:
    """A running QEMU VM as a replication source (changed-block tracking + fleecing).

    ``guest_agent`` freezes file systems for app-consistent points; ``granularity`` is the
    dirty bitmap's (bytes, a power of two); ``workdir`` holds the NBD socket and the
    fleece files during a cycle (see ``qemu_cbt.make_workdir``).
    """

    kind = "qemu"

    def __init__(
        self,
        qmp_socket: Path,
        guest_agent: GuestFreezer | None = None,
        granularity: int = DEFAULT_GRANULARITY,
        workdir: Path | None = None,
    ) -> None:
        if granularity < 512 or granularity & (granularity - 1):
            raise UsageError(f"granularity must be a power of two >= 512, not {granularity}")
        self.qmp_socket = Path(qmp_socket)
        self.guest_agent = guest_agent
        self.granularity = granularity
        self.workdir = workdir

    @classmethod
    def from_settings(cls, settings: dict[str, Any], guest_agent: GuestFreezer | None = None) -> QemuSource:
        """Build from the stored settings: ``qmp_socket``, optional ``granularity``, ``workdir``."""
        if not settings.get("qmp_socket"):
            raise UsageError("source qemu needs a qmp_socket setting")
        workdir = settings.get("workdir")
        return cls(
            Path(settings["qmp_socket"]), guest_agent,
            int(settings.get("granularity", DEFAULT_GRANULARITY)), Path(workdir) if workdir else None,
        )

    # -- one cycle ----------------------------------------------------------------------

    def _resolve(self, qmp: QmpClient, machine: MachineSpec) -> list[tuple[int, QemuDisk]]:
        current = list_disks(qmp)
        out = []
        for spec in machine.disks:
            disk = next((d for d in current if d.matches(spec.ref)), None)
            if disk is None:
                have = ", ".join(d.ref for d in current) or "none"
                raise UsageError(
                    f"disk {spec.index} of {machine.name} ({spec.ref}) is not a writable disk of the "
                    f"QEMU behind {self.qmp_socket} any more (it has: {have}); rediscover the machine"
                )
            out.append((spec.index, disk))
        if not out:
            raise UsageError(f"{machine.name} has no disks to replicate")
        return out

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        """Open every disk at one instant (fleecing) with the dirty extents since ``parent``.

        Reads go through the fleece exports, so the data is the transaction's instant while
        the guest writes on. Bitmaps older than the new one are removed only after
        ``on_commit`` ran, when the context closes (an export keeps them busy until then);
        a cycle that dies before the commit leaves them for the next cycle to union.
        """
        tag = machine_tag(machine.id)
        notes: list[str] = []
        committed: list[RecoveryPoint] = []
        plans: list[DiskPlan] = []
        opened: list[NbdDisk] = []
        qmp = connect_qmp(self.qmp_socket)
        workdir = make_workdir(self.workdir)
        session = FleeceSession(qmp, tag, workdir)
        try:
            left = session.clean_leftovers()
            if left:
                notes.append(f"removed leftovers of an interrupted cycle: {', '.join(left)}")
            disks = self._resolve(qmp, machine)
            plans += self._plans(qmp, tag, disks, parent, notes)
            session.start_server()  # first: it may refuse (someone else's exports)
            for index, disk in disks:
                session.prepare(index, disk.node_name, disk.size)
            actions = self._actions(session, plans, disks)
            instant = datetime.now(UTC)  # the point's time: when the transaction fixes the data
            consistency, freeze = self._instant(qmp, actions, app_consistent, notes)

            readable: list[tuple[int, ReadableDisk]] = []
            changed: dict[int, list[Extent] | None] = {}
            for plan, (index, disk) in zip(plans, disks, strict=True):
                export = session.export(index, plan.union or [])
                contexts = [f"qemu:dirty-bitmap:{n}" for n in plan.union or []]
                nbd = open_nbd(session.socket, export, (BASE_ALLOCATION, *contexts))
                opened.append(nbd)
                nbd.name = f"{machine.name} disk {index} ({disk.ref}) at the cycle's instant"
                readable.append((index, nbd))
                changed[index] = (
                    union_extents(nbd.dirty_extents(c) for c in contexts) if plan.union is not None else None
                )
            metadata: dict[str, Any] = {
                "kind": self.kind,
                "bitmaps": {str(p.index): p.new for p in plans},
                "granularity": self.granularity,
                "persistent": {str(i): d.bitmaps_persist for i, d in disks},
                "dirty_bytes": {str(i): None if c is None else sum(e.length for e in c)
                                for i, c in changed.items()},
            }
            if freeze:
                metadata["freeze"] = freeze
            yield Snapshot(readable, consistency, changed, metadata, notes, on_commit=committed.append,
                           taken_at=instant)
        finally:
            for nbd in opened:
                nbd.close()
            notes += session.teardown()
            if committed:
                notes += self._drop_old(qmp, tag, plans)
            qmp.close()
            remove_workdir(workdir)

    def _plans(self, qmp: QmpClient, tag: str, disks: list[tuple[int, QemuDisk]],
               parent: RecoveryPoint | None, notes: list[str]) -> list[DiskPlan]:
        """Per disk, which bitmap starts now and which say what changed since ``parent``
        (``qemu_cbt.plan_disk`` decides; stale bitmaps it names are removed here)."""
        sequence = parent.sequence + 1 if parent is not None else 0
        recorded = _parent_bitmaps(parent)
        on_node = node_bitmaps(qmp)
        # A disk the parent does not have (added since) is read whole, like a first copy.
        before = {d.index: d.size for d in parent.disks} if parent is not None else {}
        plans = []
        for index, disk in disks:
            if index in before and before[index] != disk.size:
                notes.append(f"disk {index} was resized from {before[index]} to {disk.size} bytes: "
                             "read in full")
            plan = plan_disk(
                index, disk.node_name, on_node.get(disk.node_name, []), tag=tag,
                new=bitmap_name(tag, sequence), parent_bitmap=recorded.get(str(index)),
                parent_sequence=parent.sequence if parent is not None and index in before else None,
                persistent=disk.bitmaps_persist,
            )
            notes += [f"disk {index}: could not remove {f}" for f in
                      remove_bitmaps(qmp, disk.node_name, plan.remove_now)]
            if plan.note:
                notes.append(plan.note)
            plans.append(plan)
        return plans

    def _actions(self, session: FleeceSession, plans: list[DiskPlan],
                 disks: list[tuple[int, QemuDisk]]) -> list[dict[str, Any]]:
        """The one QMP transaction of the cycle's instant: per disk, add the new bitmap,
        disable the ones that end here, start the fleecing backup."""
        actions: list[dict[str, Any]] = []
        for plan, (index, disk) in zip(plans, disks, strict=True):
            actions.append({"type": "block-dirty-bitmap-add", "data": {
                "node": disk.node_name, "name": plan.new, "granularity": self.granularity,
                "persistent": disk.bitmaps_persist}})
            actions += [
                {"type": "block-dirty-bitmap-disable", "data": {"node": disk.node_name, "name": n}}
                for n in plan.disable
            ]
            actions.append(session.backup_action(index, disk.node_name))
        return actions

    def _instant(
        self, qmp: QmpClient, actions: list[dict[str, Any]], app_consistent: bool, notes: list[str]
    ) -> tuple[Consistency, dict[str, Any]]:
        """Run the transaction, inside a guest freeze when asked and possible.

        The freeze lasts only the transaction (milliseconds): everything slow (fleece files,
        nodes, NBD server) is ready before. A failed freeze still makes a point, recorded
        crash-consistent with the reason.
        """
        agent = self.guest_agent if app_consistent else None
        if app_consistent and agent is None:
            notes.append("no guest agent configured for this source: crash-consistent")
        frozen = 0
        attempted = failed = False
        t0 = time.monotonic()
        if agent is not None:
            attempted = True
            try:
                agent.ping()  # fail in seconds, not minutes, when no agent answers
                frozen = agent.freeze()
                if frozen == 0:
                    notes.append("the guest agent froze no file system: crash-consistent")
            except Exception as exc:  # any agent failure: fall back, never abort the cycle
                failed = True
                notes.append(f"guest freeze failed ({exc}): crash-consistent")
        try:
            qmp.execute("transaction", {"actions": actions})
        finally:
            if attempted and agent is not None:
                try:
                    agent.thaw()
                except Exception as exc:
                    if not failed:
                        notes.append(f"guest thaw failed ({exc}): its file systems may still be frozen")
        if frozen > 0:  # how long the guest's writes were held, freeze to thaw
            return Consistency.APP, {"filesystems": frozen, "seconds": round(time.monotonic() - t0, 3)}
        return Consistency.CRASH, {}

    def _drop_old(self, qmp: QmpClient, tag: str, plans: list[DiskPlan]) -> list[str]:
        """After the commit: keep only each disk's new bitmap (of this machine's)."""
        problems: list[str] = []
        try:
            on_node = node_bitmaps(qmp)
        except QmpError as exc:
            return [f"could not drop old dirty bitmaps ({exc}): the next commit will"]
        for plan in plans:
            old = [b.name for b in on_node.get(plan.node, [])
                   if b.name != plan.new and parse_bitmap(b.name, tag) is not None]
            problems += [f"disk {plan.index}: old bitmap not removed: {f}"
                         for f in remove_bitmaps(qmp, plan.node, old)]
        return problems

    def drop_tracking(self, machine: MachineSpec) -> list[str]:
        """Remove every dirty bitmap of this machine from QEMU (replication disabled or the
        migration completed): they would otherwise cost QEMU memory forever."""
        tag = machine_tag(machine.id)
        qmp = connect_qmp(self.qmp_socket)
        try:
            removed = []
            for node, bitmaps in node_bitmaps(qmp).items():
                ours = [b.name for b in bitmaps if parse_bitmap(b.name, tag) is not None]
                failed = remove_bitmaps(qmp, node, ours)
                if failed:
                    raise UsageError(f"could not remove dirty bitmaps: {'; '.join(failed)}")
                removed += ours
            return removed
        finally:
            qmp.close()

    # -- shutting the source down ---------------------------------------------------------

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        try:
            qmp = connect_qmp(self.qmp_socket)
        except UsageError as exc:
            return str(exc)
        try:
            if "system_powerdown" not in commands(qmp):
                return "a qemu-storage-daemon has no guest to shut down"
            return None
        finally:
            qmp.close()

    def shutdown(self, machine: MachineSpec, timeout: float, *, keep_alive: bool = True) -> str:
        """ACPI power button, wait up to ``timeout`` s, then a hard stop; says which.

        ``keep_alive`` (default) first sets QEMU's shutdown action to ``pause`` (what
        ``-no-shutdown`` does; QMP ``set-action``, QEMU >= 6.0): QEMU stays up after the
        guest powers off, so a final sync can still read the disks with their bitmaps; and
        the hard stop is ``stop`` (vCPUs halted, disks crash-consistent) rather than
        ``quit``. Call ``quit_qemu`` after the final sync. Without ``keep_alive`` QEMU exits
        when the guest powers off (unless started with ``-no-shutdown``: reported) or is
        quit after the timeout.
        """
        qmp = connect_qmp(self.qmp_socket)
        try:
            if "system_powerdown" not in commands(qmp):
                raise UsageError("a qemu-storage-daemon has no guest to shut down")
            status = str(qmp.execute("query-status")["status"])
            if status == "shutdown":
                return "the guest was already powered off; QEMU is still up: its disks can be read"
            if keep_alive:
                qmp.execute("set-action", {"shutdown": "pause"})
            if status != "running":
                if keep_alive:
                    return (f"the guest is not running (status {status}): nothing to power off; QEMU "
                            "keeps its disks readable (call quit_qemu after the final sync)")
                _quit(qmp)
                return f"the guest was not running (status {status}): QEMU was quit"
            qmp.events.clear()
            qmp.execute("system_powerdown")
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                try:
                    status = str(qmp.execute("query-status")["status"])
                except QmpError:
                    return (f"the guest powered off after {time.monotonic() - t0:.1f}s and QEMU exited "
                            "(no -no-shutdown): its disks can no longer be read through QEMU")
                if status == "shutdown":  # not the SHUTDOWN event: QEMU sends it and may exit
                    how = "shutdown action set to pause" if keep_alive else "started with -no-shutdown"
                    return (f"the guest powered off after {time.monotonic() - t0:.1f}s (ACPI power "
                            f"button); QEMU stays up ({how}): its disks can still be read for a final "
                            "sync — call quit_qemu after it")
                time.sleep(0.2)
            if keep_alive:
                qmp.execute("stop")
                return (f"the guest did not power off within {timeout:.0f}s: hard stop — its vCPUs were "
                        "stopped (like pulling the plug); QEMU stays up so a final sync reads the "
                        "crash-consistent disks — call quit_qemu after it")
            _quit(qmp)
            return f"the guest did not power off within {timeout:.0f}s: hard stop — QEMU was quit"
        finally:
            qmp.close()

    def release(self, machine: MachineSpec) -> str | None:
        return self.quit_qemu(machine)

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        try:
            dropped = self.drop_tracking(machine)
        except UsageError as exc:  # QEMU gone: its non-persistent bitmaps went with it
            return f"could not reach QEMU to remove dirty bitmaps: {exc}"
        return f"removed {len(dropped)} dirty bitmap(s)" if dropped else None

    def quit_qemu(self, machine: MachineSpec) -> str:
        """End the QEMU process (after the final sync of a failover); fine if it is gone."""
        try:
            qmp = connect_qmp(self.qmp_socket, timeout=5)
        except UsageError:
            return "QEMU is not running"
        try:
            _quit(qmp)
            return "QEMU quit"
        finally:
            qmp.close()


def _quit(qmp: QmpClient) -> None:
    with contextlib.suppress(QmpError):  # QEMU may close the socket before it replies
        qmp.execute("quit")


def _parent_bitmaps(parent: RecoveryPoint | None) -> dict[str, str]:
    """The bitmaps the parent point recorded (none if it came from another source kind)."""
    if parent is None or parent.source.get("kind") != QemuSource.kind:
        return {}
    bitmaps = parent.source.get("bitmaps")
    return {str(k): str(v) for k, v in bitmaps.items()} if isinstance(bitmaps, dict) else {}
