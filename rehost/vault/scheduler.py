"""Continuous replication: keep every protected item within its policy (``rehost serve``).

Each tick looks at every item that has a policy and is in a replicating state, decides
whether a cycle is due (crash-consistent every N seconds, app-consistent every M), hands it
to a bounded pool of workers (cycles of different machines run side by side, one machine
never twice), and records the attempt on the item (time, duration, error) so health can
explain a miss. Each cycle is a job. Policies are re-read every tick, so changes apply to
running replication. Retention is applied now and then, in one prune for all items, which
also compresses what an initial copy stored uncompressed, a slice at a time; jobs whose
runner died (a killed server) are picked up again.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rehost.errors import RehostError
from rehost.jobs import dispatch, leases
from rehost.jobs.runner import resumable_jobs
from rehost.replication.retention import PointTime, points_to_keep
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.prune import prune
from rehost.vault import agents, audit, inventory, point_records, policies
from rehost.vault.cycles import replicate_job
from rehost.vault.models import MachineRow, PolicyRow
from rehost.vault.point_records import PointRecord, PointSummary
from rehost.vault.states import ALLOWED
from rehost.vault.vault import Vault

RETENTION_EVERY_S = 600
#: while an initial copy awaits compression, the retention pass comes this often and compresses
#: this many of its packs (16 MiB each): cycles wait while a prune runs, a few seconds each time
COMPRESS_EVERY_S = 60.0
COMPRESS_PACKS = 32
#: how often ``rehost serve`` looks for jobs whose runner died
RESUME_EVERY_S = 15.0


SCHEDULER = audit.Actor("system:scheduler", via="system")


def default_workers() -> int:
    """Cycles are mostly waiting on disks and the network, hashing and compressing in C
    libraries that release the GIL: two per core, at least two."""
    return max(2, 2 * (os.cpu_count() or 1))
#: after the n-th failure in a row the next attempt waits BACKOFF_BASE_S * 2**(n-1), at most MAX
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 900.0


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failed cycles in a row (exponential, capped)."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * float(2 ** max(0, min(failures, 20) - 1)))


@dataclass
class TickResult:
    machine: str
    ran: bool
    app_consistent: bool = False
    point: str | None = None
    error: str = ""
    seconds: float = 0.0


def _when(p: RecoveryPoint | PointRecord) -> float:
    return _stamp(p.time)


def _stamp(time_text: str) -> float:
    """A point's time (its manifest's ISO-8601 UTC text) as a unix time."""
    return datetime.strptime(time_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Scheduler:
    def __init__(
        self,
        vault: Vault,
        *,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
        workers: int = 1,
        resume_jobs: bool = False,
    ) -> None:
        self.vault = vault
        self.clock = clock
        self.log = log or (lambda _msg: None)
        self.workers = workers
        self.resume_jobs = resume_jobs
        self._last_retention = float("-inf")
        self._last_app_attempt: dict[str, float] = {}
        self._last_heartbeats = float("-inf")
        self._last_resume = float("-inf")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rehost-cycle")
        #: machine id -> its cycle in the pool (a machine never runs two at once)
        self._running: dict[str, Future[TickResult]] = {}
        self._retention_thread: threading.Thread | None = None

    def due(self, machine: MachineRow, policy: PolicyRow,
            points: PointSummary | Sequence[RecoveryPoint | PointRecord]) -> tuple[bool, bool]:
        """(a cycle is due, it should be app-consistent). ``points``: the machine's point
        summary (what a tick reads: its latest and latest app-consistent point), or its points."""
        now = self.clock()
        summary = point_records.summary_of(points)
        last = _stamp(summary.latest_time) if summary.latest_time else None
        lc = machine.last_cycle or {}
        last_try = datetime.fromisoformat(lc["time"]).timestamp() if lc.get("time") else None
        if last_try is not None and lc.get("error") and now - last_try < backoff(int(lc.get("failures", 1))):
            return False, False  # the source is down or failing: retry later and later
        app = False
        if policy.app_consistent_every_s:
            last_app = max(_stamp(summary.latest_app_time) if summary.latest_app_time else 0.0,
                           self._last_app_attempt.get(machine.id, 0.0))
            app = now - last_app >= policy.app_consistent_every_s
        if last is None or app:
            return True, app
        return now - last >= policy.crash_consistent_every_s, False

    def tick(self, *, wait: bool = True) -> list[TickResult]:
        """One scheduling pass: start the cycles that are due. ``wait``: return their results
        (``rehost serve --once``, tests); else return at once with those that ended."""
        self.vault.beat()
        # one summary row per machine (count, latest, latest app-consistent): a tick costs the
        # same with 10 or 10,000 points per machine, and decodes no manifest
        summaries = point_records.summaries(self.vault)
        machines = inventory.list_machines(self.vault)
        self._heartbeats(machines)
        if self.resume_jobs:
            self._resume_jobs()
        started: list[Future[TickResult]] = []
        with_policy: list[tuple[MachineRow, PolicyRow]] = []
        for machine in machines:
            policy = policies.policy_of(self.vault, machine)
            if policy is None or machine.state not in ALLOWED["replicate"]:
                continue
            with_policy.append((machine, policy))
            if machine.id in self._running:
                continue
            run, app = self.due(machine, policy, summaries.get(machine.id, PointSummary()))
            if run:
                fut = self._pool.submit(self._scheduled_cycle, machine, policy, app)
                self._running[machine.id] = fut
                started.append(fut)
        self._retention(with_policy, wait=wait)
        if wait:
            for f in started:
                f.result()
        return self._reap()

    def _reap(self) -> list[TickResult]:
        done = [mid for mid, f in self._running.items() if f.done()]
        return [self._running.pop(mid).result() for mid in done]

    def close(self) -> None:
        """Let running cycles finish (each is a job: a kill instead leaves it resumable)."""
        self._pool.shutdown(wait=True)
        if self._retention_thread is not None:
            self._retention_thread.join()

    def _resume_jobs(self) -> None:
        """Pick up jobs whose runner died (a killed server, a killed CLI) or that were queued
        and never started; the plan re-runs the step that was cut short. A machine's job
        counts as its running cycle: no new cycle of that machine starts meanwhile."""
        now = self.clock()
        if now - self._last_resume < RESUME_EVERY_S:
            return
        self._last_resume = now
        # with a broker a queued job may be waiting for a free worker: resend it only late
        brokered = dispatch.broker_url(self.vault) is not None
        queued_for = dispatch.RESEND_QUEUED_AFTER_S if brokered else leases.TTL_S
        for job in resumable_jobs(self.vault, queued_for=queued_for):
            key = job.machine_id or f"job:{job.id}"
            if key in self._running:
                continue
            self.log(f"{job.machine_name}: picking up {job.kind} job {job.id}")
            self._running[key] = self._pool.submit(self._resume, job.id, job.machine_name)

    def _resume(self, job_id: str, machine: str) -> TickResult:
        started = self.clock()
        try:
            job = dispatch.execute(self.vault, job_id)  # here, or on a worker with a broker
        except RehostError as e:  # another runner took it first, or it ended meanwhile
            self.log(f"{machine}: job {job_id} not resumed: {e}")
            return TickResult(machine, False, error=str(e))
        self.log(f"{machine}: {job.kind} job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
        return TickResult(machine, True, point=job.outputs.get("point"), error=job.error,
                          seconds=round(self.clock() - started, 3))

    def _heartbeats(self, machines: list[MachineRow]) -> None:
        """Ask the agents of physical machines how they are, now and then (health shows it)."""
        now = self.clock()
        if now - self._last_heartbeats < agents.HEARTBEAT_EVERY_S:
            return
        self._last_heartbeats = now
        watched = [m for m in machines if agents.has_agent(m)]
        for name, record in agents.check_heartbeats(
            self.vault, watched, datetime.fromtimestamp(now, UTC), timeout=5
        ).items():
            if record.get("error"):
                self.log(f"{name}: no heartbeat: {record['error']}")

    def _scheduled_cycle(self, machine: MachineRow, policy: PolicyRow, app: bool) -> TickResult:
        """A cycle the policy asked for: its job's actor is rehost itself, not the user who
        started ``rehost serve`` (and the audit log does not record it)."""
        with audit.acting_as(SCHEDULER):
            return self._cycle(machine, policy, app)

    def _cycle(self, machine: MachineRow, policy: PolicyRow, app: bool) -> TickResult:
        started = self.clock()
        if app:
            self._last_app_attempt[machine.id] = started
        record: dict[str, Any] = {"time": datetime.fromtimestamp(started, UTC).isoformat()}
        try:
            limit = self._limit(machine, policy, started)  # source reads and repository writes alike
            r = replicate_job(self.vault, machine.name, app_consistent=app, bandwidth_bps=limit,
                              scheduled=True)
            record.update(
                seconds=round(self.clock() - started, 3),
                bytes_read=r.bytes_read,
                stored=r.stats.stored_bytes,
                point=r.point.id,
                consistency=r.point.consistency.value,
                notes=r.notes,
                error="",
            )
            self.log(
                f"{machine.name}: point {r.point.short_id} ({r.point.consistency.value}) "
                f"in {record['seconds']:.1f}s, {r.changed_bytes} changed bytes"
            )
            result = TickResult(machine.name, True, app, r.point.id, seconds=record["seconds"])
        except Exception as e:  # one item's failure must not stop the others
            msg = str(e) if isinstance(e, RehostError) else f"{type(e).__name__}: {e}"
            before = machine.last_cycle or {}
            failures = int(before.get("failures", 0)) + 1 if before.get("error") else 1
            record.update(seconds=round(self.clock() - started, 3), error=msg, failures=failures,
                          retry_in=backoff(failures))
            self.log(f"{machine.name}: cycle failed ({failures} in a row, next try in "
                     f"{backoff(failures):.0f}s): {msg}")
            if not isinstance(e, RehostError):
                self.log(traceback.format_exc(limit=5))
            result = TickResult(machine.name, True, app, error=msg, seconds=record["seconds"])
        _record(self.vault, machine, record)
        return result

    def _limit(self, machine: MachineRow, policy: PolicyRow, now: float) -> int | None:
        """The policy's bandwidth for a cycle starting now (the server's local time): a window of
        its schedule, else its default. It holds for the whole cycle."""
        when = datetime.fromtimestamp(now)
        window = policies.window_at(policy, when)
        if window is None:
            return policy.bandwidth_bps
        bps = policies.bandwidth_at(policy, when)
        limit = policies.format_bandwidth(bps) if bps else "unlimited"
        self.log(f"{machine.name}: bandwidth window {policies.window_spec(window)} applies: {limit}")
        return bps

    def _retention(self, items: list[tuple[MachineRow, PolicyRow]], *, wait: bool) -> None:
        """Now and then, thin every item's points by its policy in one prune. Prune's delete
        phase runs alone among writers, so it runs in a thread of its own, not in a worker."""
        now = self.clock()
        every = COMPRESS_EVERY_S if self.vault.repo.index.deferred else RETENTION_EVERY_S
        if now - self._last_retention < every or not items:
            return
        if self._retention_thread is not None and self._retention_thread.is_alive():
            return
        self._last_retention = now
        t = threading.Thread(target=self._thin, args=(items, now), name="rehost-retention", daemon=True)
        self._retention_thread = t
        t.start()
        if wait:
            t.join()

    def _thin(self, items: list[tuple[MachineRow, PolicyRow]], now: float) -> None:
        """Decide first, without holding anything; only when some point is due to go does
        prune take the repository (cycles pause while it deletes)."""
        try:
            # retention decides from the records: synced first, as a prune by someone else (the
            # purge of ``complete``) or a crash may have left them behind; names only are listed
            point_records.sync(self.vault)
            forget = self._due_to_go(items, now)
            # an initial copy stored uncompressed (Writer.compress_later) is compressed here
            self.vault.repo.refresh_index()
            if not forget and not self.vault.repo.index.deferred:
                return
            machine_ids = {m.name: m.id for m, _ in items}
            with leases.pruning(self.vault), point_records.changing(self.vault,
                                                                    [machine_ids[n] for n in forget]):
                reading = leases.points_being_read(self.vault)  # read since we decided: kept
                gone = set().union(*forget.values()) - reading
                report = prune(self.vault.repo, gone, reading=reading, compress=COMPRESS_PACKS)
            for name, ids in sorted(forget.items()):
                self.log(f"{name}: retention removed {len(ids - reading)} point(s)")
            if report.packs_compressed or report.packs_left_as_stored:
                left = len(self.vault.repo.index.deferred)
                kept = report.packs_left_as_stored
                self.log(f"compressed {report.packs_compressed} pack(s) an initial copy stored uncompressed"
                         + (f", {kept} did not shrink and stay as stored" if kept else "")
                         + (f" ({left} to go)" if left else ""))
        except Exception as e:  # the next pass tries again; replication goes on meanwhile
            self.log(f"retention postponed: {type(e).__name__}: {e}")

    def _due_to_go(self, items: list[tuple[MachineRow, PolicyRow]], now: float) -> dict[str, set[str]]:
        """Per machine name, the points its policy's retention lets go now (from the point
        records: their times and consistency are all retention needs)."""
        reading = leases.points_being_read(self.vault)
        by_machine = point_records.records_by_machine(self.vault, disks=False)
        when = datetime.fromtimestamp(now, UTC)
        forget: dict[str, set[str]] = {}
        for machine, policy in items:
            points = by_machine.get(machine.id, [])
            times = [PointTime(p.id, datetime.fromtimestamp(_when(p), UTC), p.consistency == Consistency.APP)
                     for p in points]
            keep = points_to_keep(times, policies.retention_of(policy), when)
            gone = {p.id for p in points} - keep - reading
            if gone:
                forget[machine.name] = gone
        return forget

    def run_forever(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        try:
            while not stop.is_set():
                self.tick(wait=False)
                stop.wait(tick_s)
        finally:
            self.close()


def _record(vault: Vault, machine: MachineRow, record: dict[str, Any]) -> None:
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        if row is not None:
            row.last_cycle = record
