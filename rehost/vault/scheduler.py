"""Continuous replication: keep every protected item within its policy (``rehost serve``).

Each tick looks at every item that has a policy and is in a replicating state, decides
whether a cycle is due (crash-consistent every N seconds, app-consistent every M), runs it,
and records the attempt on the item (time, duration, error) so health can explain a miss.
Policies are re-read every tick, so changes apply to running replication. Retention is
applied per item now and then.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rehost.errors import RehostError
from rehost.replication.retention import PointTime, points_to_keep
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.repository.prune import prune
from rehost.vault import agents, inventory, policies
from rehost.vault.models import MachineRow, PolicyRow
from rehost.vault.protection import replicate
from rehost.vault.states import ALLOWED
from rehost.vault.vault import Vault

RETENTION_EVERY_S = 600
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


def _when(p: RecoveryPoint) -> float:
    return datetime.strptime(p.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Scheduler:
    def __init__(
        self,
        vault: Vault,
        *,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.vault = vault
        self.clock = clock
        self.log = log or (lambda _msg: None)
        self._last_retention: dict[str, float] = {}
        self._last_app_attempt: dict[str, float] = {}
        self._last_heartbeats = float("-inf")

    def due(self, machine: MachineRow, policy: PolicyRow, points: list[RecoveryPoint]) -> tuple[bool, bool]:
        """(a cycle is due, it should be app-consistent)."""
        now = self.clock()
        last = _when(points[-1]) if points else None
        lc = machine.last_cycle or {}
        last_try = datetime.fromisoformat(lc["time"]).timestamp() if lc.get("time") else None
        if last_try is not None and lc.get("error") and now - last_try < backoff(int(lc.get("failures", 1))):
            return False, False  # the source is down or failing: retry later and later
        app = False
        if policy.app_consistent_every_s:
            apps = [_when(p) for p in points if p.consistency == Consistency.APP]
            last_app = max([*apps, self._last_app_attempt.get(machine.id, 0.0)], default=0.0)
            app = now - last_app >= policy.app_consistent_every_s
        if last is None or app:
            return True, app
        return now - last >= policy.crash_consistent_every_s, False

    def tick(self) -> list[TickResult]:
        self.vault.beat()
        results = []
        points_by_machine: dict[str, list[RecoveryPoint]] = {}
        for p in self.vault.repo.list_points():
            points_by_machine.setdefault(p.machine, []).append(p)
        machines = inventory.list_machines(self.vault)
        self._heartbeats(machines)
        for machine in machines:
            policy = policies.policy_of(self.vault, machine)
            if policy is None or machine.state not in ALLOWED["replicate"]:
                continue
            points = points_by_machine.get(machine.id, [])
            run, app = self.due(machine, policy, points)
            if run:
                results.append(self._cycle(machine, policy, app))
            self._retention(machine, policy)
        return results

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

    def _cycle(self, machine: MachineRow, policy: PolicyRow, app: bool) -> TickResult:
        started = self.clock()
        if app:
            self._last_app_attempt[machine.id] = started
        record: dict[str, Any] = {"time": datetime.fromtimestamp(started, UTC).isoformat()}
        try:
            limit = self._limit(machine, policy, started)
            with _bandwidth(self.vault, limit):  # source reads and repository writes alike
                r = replicate(self.vault, machine.name, app_consistent=app, bandwidth_bps=limit)
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

    def _retention(self, machine: MachineRow, policy: PolicyRow) -> None:
        now = self.clock()
        if now - self._last_retention.get(machine.id, 0.0) < RETENTION_EVERY_S:
            return
        self._last_retention[machine.id] = now
        try:
            with self.vault.lock("write"), self.vault.lock("data"):
                points = self.vault.repo.list_points(machine.id)
                times = [
                    PointTime(p.id, datetime.fromtimestamp(_when(p), UTC), p.consistency == Consistency.APP)
                    for p in points
                ]
                keep = points_to_keep(times, policies.retention_of(policy), datetime.fromtimestamp(now, UTC))
                forget = {p.id for p in points} - keep
                if forget:
                    report = prune(self.vault.repo, forget)
                    self.log(f"{machine.name}: retention removed {report.points_removed} point(s)")
        except RehostError as e:  # busy (a failover serves points): try again next time
            self.log(f"{machine.name}: retention postponed: {e}")

    def run_forever(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(tick_s)


class _bandwidth:
    """Throttle the repository's writes for one cycle (a wrapper, not an if in the backends)."""

    def __init__(self, vault: Vault, bps: int | None) -> None:
        self.vault, self.bps = vault, bps
        self._saved: Any = None

    def __enter__(self) -> None:
        if self.bps:
            from rehost.repository.storage import ThrottledStorage

            repo = self.vault.repo
            self._saved = repo.storage
            repo.storage = ThrottledStorage(repo.storage, self.bps)

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            self.vault.repo.storage = self._saved


def _record(vault: Vault, machine: MachineRow, record: dict[str, Any]) -> None:
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        if row is not None:
            row.last_cycle = record
