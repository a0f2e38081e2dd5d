"""Replication health per item: RPO against the policy, and *why* an item is behind.

Pure logic over what the vault records (last point, last attempt, the policy), so every
verdict is testable without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class HealthInput:
    state: str
    last_point: datetime | None
    last_app_point: datetime | None
    rpo_threshold_s: float | None  # None: no policy attached
    app_every_s: float = 0
    cycle_every_s: float = 30
    last_attempt: datetime | None = None
    last_error: str = ""
    last_cycle_s: float | None = None
    backlog_bytes: int | None = None
    scheduler_seen: datetime | None = None  # when `rehost serve` last ran its loop
    failures: int = 0  # failed cycles in a row (the scheduler backs off exponentially)
    agent: bool = False  # the source is a machine's own agent
    agent_seen: datetime | None = None  # its last heartbeat answer
    agent_error: str = ""  # why the last heartbeat got no answer
    replica_target: str = ""  # the target that keeps a replica of the disks (Azure), if any
    replica_point_time: datetime | None = None  # the time of the point the replica holds
    replica_error: str = ""  # why the last sync of the replica failed


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # healthy | warning | critical | not-protected
    rpo_s: float | None
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "rpo_seconds": None if self.rpo_s is None else round(self.rpo_s, 1),
            "reason": self.reason,
        }


def assess(h: HealthInput, now: datetime) -> Health:
    if h.state in ("failed_over", "migration_completed", "failover_in_progress"):
        return Health("not-protected", None, f"replication stopped ({h.state.replace('_', ' ')})")
    if h.last_point is None:
        if h.agent and h.agent_error:
            return Health("critical", None, f"initial replication waits for the agent: {_agent(h, now)}")
        if h.last_error:
            return Health("critical", None, f"initial replication failed: {h.last_error}")
        return Health("not-protected", None, "no recovery point yet: initial replication pending")
    rpo = (now - h.last_point).total_seconds()
    if h.rpo_threshold_s is None:
        if h.agent and h.agent_error:
            return Health("warning", rpo, _agent(h, now))
        lag = _replica_lag(h, now)
        if lag:
            return Health("warning", rpo, lag)
        return Health("healthy", rpo, "no policy attached: replicated on demand only")
    status = "healthy"
    if rpo > 2 * h.rpo_threshold_s:
        status = "critical"
    elif rpo > h.rpo_threshold_s:
        status = "warning"
    reasons: list[str] = []
    if status != "healthy":
        reasons.append(_why_behind(h, now, rpo))
    elif h.agent and h.agent_error:  # within the RPO still, but the next cycle will fail
        status = "warning"
        reasons.append(_agent(h, now))
    lag = _replica_lag(h, now)
    if lag:
        status = "warning" if status == "healthy" else status
        reasons.append(lag)
    if h.app_every_s and (
        h.last_app_point is None or (now - h.last_app_point).total_seconds() > 2 * h.app_every_s
    ):
        status = "warning" if status == "healthy" else status
        age = "none yet" if h.last_app_point is None else f"last {_ago(now, h.last_app_point)}"
        reasons.append(
            f"app-consistent points overdue ({age}; policy every {span(h.app_every_s)}): "
            "is the guest agent reachable?"
        )
    return Health(status, rpo, "; ".join(reasons))


def _why_behind(h: HealthInput, now: datetime, rpo: float) -> str:
    """The likely cause, most specific first."""
    head = f"RPO {span(rpo)} exceeds {span(h.rpo_threshold_s or 0)}"
    if h.agent and h.agent_error:
        return f"{head}: {_agent(h, now)}"
    if h.last_error and h.last_attempt is not None:
        tries = f" ({h.failures} failures in a row)" if h.failures > 1 else ""
        return f"{head}: last cycle failed {_ago(now, h.last_attempt)}{tries}: {h.last_error}"
    if h.scheduler_seen is None or (now - h.scheduler_seen).total_seconds() > max(60, 3 * h.cycle_every_s):
        return f"{head}: no scheduler is running (start rehost serve)"
    if h.state == "paused":
        return f"{head}: replication is paused"
    if h.last_cycle_s is not None and h.last_cycle_s > (h.rpo_threshold_s or 0):
        took = span(h.last_cycle_s)
        return f"{head}: a cycle takes {took}, longer than the threshold (churn or bandwidth)"
    if h.backlog_bytes:
        return f"{head}: {h.backlog_bytes} changed bytes waiting"
    return f"{head}: cycles are not keeping up"


def _replica_lag(h: HealthInput, now: datetime) -> str:
    """The replica on the target (Azure page blobs) lags the newest point: a failover would
    first have to write the difference. Right after a cycle the sync is still running, so a
    lag without an error counts only once it is older than a minute (or the RPO threshold)."""
    if not h.replica_target or h.last_point is None:
        return ""
    held = h.replica_point_time
    if held is not None and held >= h.last_point:
        return ""
    holds = f"it holds the point of {_ago(now, held)}" if held else "it holds no point yet"
    if h.replica_error:
        return (f"the replica on target {h.replica_target} is behind ({holds}): "
                f"last sync failed: {h.replica_error}")
    if (now - h.last_point).total_seconds() > max(60.0, h.rpo_threshold_s or 0):
        return (f"the replica on target {h.replica_target} is behind ({holds}; newest point "
                f"{_ago(now, h.last_point)}): no sync has run since")
    return ""


def _agent(h: HealthInput, now: datetime) -> str:
    since = f"since {_ago(now, h.agent_seen)}" if h.agent_seen else "since it registered"
    return f"the agent has not answered {since}: {h.agent_error}"


def span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _ago(now: datetime, then: datetime) -> str:
    return f"{span((now - then).total_seconds())} ago"

