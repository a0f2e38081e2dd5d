"""``GET /metrics``: the vault's state in the Prometheus text format (``docs/metrics.md``).

Every value is read from the vault when Prometheus scrapes, by a custom collector, never
counted in this process: replication runs in the scheduler of one ``rehost serve``, in
commands and in workers on other hosts, so only the vault's records (machines, point
records, jobs, leases) know what happened. Any process serving the API
therefore answers the same, and a scrape after a restart loses nothing.

A scrape costs a fixed number of queries, none per item: the machines (with their sources
and policies), the point summaries (one row per machine: count and newest point, no
manifest decoded; ``rehost.vault.point_records``), three on the jobs table (counts by kind
and state, the running rows, the newest successful cycle of each machine) and one on the
leases.

``prometheus_client`` is imported with this module, not lazily: after FastAPI (which the
API has loaded anyway) it costs about 12 ms, against about 1 s for the portal's own import
(measured on the development host; alone, cold, it takes about 75 ms).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from rehost.api.auth import Reader, VaultDep
from rehost.jobs import leases
from rehost.jobs.models import JobRow, LeaseRow
from rehost.vault import overview, policies
from rehost.vault.cycles import REPLICATE
from rehost.vault.models import MachineRow
from rehost.vault.point_records import PointSummary
from rehost.vault.states import ItemState
from rehost.vault.vault import Vault

#: every job state a row can show; "interrupted" is derived (running, but its lease lapsed)
JOB_STATES = ("queued", "running", "interrupted", "succeeded", "failed", "cancelled")
#: the verdicts of ``rehost.replication.health.assess``; every one is exported, 0 or 1
HEALTH_STATUSES = ("healthy", "warning", "critical", "not-protected")
#: a worker whose lease lapsed without being released (killed, host gone) shows
#: ``rehost_worker_up 0`` this long, then disappears: its name (host:pid) never comes back
WORKER_GONE_SHOWN_S = 3600.0

_POINT_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _ts(value: Any) -> float | None:
    """A stored time (ISO text, or a naive-UTC/aware datetime) as unix seconds; None if unset."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            try:
                when = datetime.strptime(value, _POINT_TIME)
            except ValueError:
                return None
    elif isinstance(value, datetime):
        when = value
    else:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def process_of(holder: str) -> str:
    """``host:pid`` of a lease holder (``host:pid:nonce``: one holder per acquisition, so
    the leases of one process are grouped by dropping the nonce)."""
    return holder.rsplit(":", 1)[0] if holder.count(":") >= 2 else holder


@dataclass
class _Jobs:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: kind -> start times (unix) of the jobs whose runner holds their lease now
    running_since: dict[str, list[float]] = field(default_factory=dict)
    #: machine id -> the outputs of its newest successful cycle (``cycles.cycle_summary``)
    last_success: dict[str, dict[str, Any]] = field(default_factory=dict)


class VaultCollector(Collector):
    """Reads one vault at scrape time and yields every ``rehost_`` metric family.

    Made per scrape around the request's borrowed vault (a vault is used by one thread at a
    time), so it holds no state between scrapes.
    """

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = time.time()
        lease_rows = self._leases()
        live_jobs = {r.resource.partition(":")[2] for r in lease_rows
                     if r.resource.startswith("job:") and not self._stale(r, now)}
        jobs = self._read_jobs(live_jobs)
        yield from self._items(now, jobs.last_success)
        yield from self._jobs(jobs, now)
        yield from self._workers(lease_rows, now)
        yield from self._scheduler(lease_rows, now)
        took = GaugeMetricFamily("rehost_metrics_collect_seconds", "Time this scrape took to read "
                                 "the vault and build (and encode) the metrics before this one.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    # -- reads: a fixed number of queries per scrape ------------------------------------------

    def _machines(self) -> list[MachineRow]:
        """Every machine with its source and policy (one query per table; ``health_of`` and
        the labels need both, and no lazy load may run per machine)."""
        with self.vault.session() as s:
            return list(s.scalars(select(MachineRow).order_by(MachineRow.name)
                                  .options(selectinload(MachineRow.source), selectinload(MachineRow.policy))))

    def _points(self, machines: list[MachineRow]) -> dict[str, PointSummary]:
        """Per machine id, its point count and newest point, as the item list reads them (one
        row per machine, whatever the history; a machine without points has no row)."""
        return overview.points_by_machine(self.vault, machines)

    def _leases(self) -> list[LeaseRow]:
        with self.vault.session() as s:
            return list(s.scalars(select(LeaseRow)))

    @staticmethod
    def _stale(row: LeaseRow, now: float) -> bool:
        """As ``leases`` judges it: expired, or its holder's process on this host is gone."""
        return row.expires_at < now or leases.holder_dead(row.holder)

    def _read_jobs(self, live: set[str]) -> _Jobs:
        out = _Jobs()
        newest = (select(JobRow.machine_id, JobRow.outputs,
                         func.row_number().over(partition_by=JobRow.machine_id,
                                                order_by=(JobRow.ended_at.desc(), JobRow.created_at.desc()))
                         .label("n"))
                  .where(JobRow.kind == REPLICATE, JobRow.state == "succeeded",
                         JobRow.machine_id.is_not(None))
                  .subquery())
        with self.vault.session() as s:
            for kind, state, n in s.execute(select(JobRow.kind, JobRow.state, func.count())
                                            .where(JobRow.state != "running")
                                            .group_by(JobRow.kind, JobRow.state)):
                out.counts[(kind, state)] = int(n)
            for job_id, kind, started_at in s.execute(select(JobRow.id, JobRow.kind, JobRow.started_at)
                                                      .where(JobRow.state == "running")):
                state = "running" if job_id in live else "interrupted"
                out.counts[(kind, state)] = out.counts.get((kind, state), 0) + 1
                since = _ts(started_at)
                if state == "running" and since is not None:
                    out.running_since.setdefault(kind, []).append(since)
            for machine_id, outputs in s.execute(select(newest.c.machine_id, newest.c.outputs)
                                                 .where(newest.c.n == 1)):
                out.last_success[machine_id] = dict(outputs or {})
        return out

    # -- families --------------------------------------------------------------------------------

    def _items(self, now: float, last_success: dict[str, dict[str, Any]]) -> Iterable[Metric]:
        machines = self._machines()
        points = self._points(machines)
        at = datetime.fromtimestamp(now, UTC)
        m_ = ["machine"]
        info = GaugeMetricFamily("rehost_item_info", "One series per replicated item (value 1): its "
                                 "source, source kind and policy, to join on machine.",
                                 labels=["machine", "source", "source_kind", "policy"])
        rpo = GaugeMetricFamily("rehost_item_rpo_age_seconds", "Age of the item's newest recovery point, "
                                "as health judges it; absent without a point or once replication "
                                "stopped (failed over, completed).", labels=m_)
        last_point = GaugeMetricFamily("rehost_item_last_point_timestamp_seconds",
                                       "Unix time of the item's newest recovery point.", labels=m_)
        threshold = GaugeMetricFamily("rehost_item_rpo_threshold_seconds",
                                      "The RPO threshold of the item's policy (absent without a policy).",
                                      labels=["machine", "policy"])
        npoints = GaugeMetricFamily("rehost_item_points", "Recovery points the item has.", labels=m_)
        duration = GaugeMetricFamily("rehost_item_last_cycle_duration_seconds",
                                     "How long the scheduler's last cycle of the item took, "
                                     "success or failure.", labels=m_)
        attempt = GaugeMetricFamily("rehost_item_last_cycle_timestamp_seconds",
                                    "Unix time the scheduler's last cycle of the item started.", labels=m_)
        failures = GaugeMetricFamily("rehost_item_consecutive_cycle_failures", "Scheduled cycles of the "
                                     "item that failed in a row (0 after a success).", labels=m_)
        read = GaugeMetricFamily("rehost_item_last_cycle_read_bytes", "Bytes the item's newest "
                                 "successful cycle read from the source.", labels=m_)
        changed = GaugeMetricFamily("rehost_item_last_cycle_changed_bytes", "Bytes the item's newest "
                                    "successful cycle found changed since the previous point.", labels=m_)
        stored = GaugeMetricFamily("rehost_item_last_cycle_stored_bytes", "Bytes the item's newest "
                                   "successful cycle added to the repository (compressed, new blobs "
                                   "only).", labels=m_)
        health = GaugeMetricFamily("rehost_item_health", "1 for the item's health status, 0 for the "
                                   "others.", labels=["machine", "status"])
        state = GaugeMetricFamily("rehost_item_state", "1 for the item's state, 0 for the others.",
                                  labels=["machine", "state"])
        lag = GaugeMetricFamily("rehost_item_replica_lag_seconds", "How far the item's replica on a "
                                "target that keeps replicas is behind its newest point (0: in sync).",
                                labels=["machine", "target"])
        replica_err = GaugeMetricFamily("rehost_item_replica_sync_failing", "1 when the last sync of "
                                        "the item's replica failed.", labels=["machine", "target"])
        states = [s.value for s in ItemState]
        figures = ((read, "bytes_read"), (changed, "changed_bytes"), (stored, "stored_bytes"))
        for m in machines:
            name = m.name
            mine = points.get(m.id, PointSummary())
            policy = policies.policy_of(self.vault, m)
            info.add_metric([name, m.source.name, m.source.kind, policy.name if policy else ""], 1)
            npoints.add_metric([name], mine.points)
            verdict = policies.health_of(self.vault, m, mine, at)
            if verdict.rpo_s is not None:
                rpo.add_metric([name], verdict.rpo_s)
            newest = _ts(mine.latest_time)
            if newest is not None:
                last_point.add_metric([name], newest)
            if policy is not None:
                threshold.add_metric([name, policy.name], policy.rpo_threshold_s)
            lc = m.last_cycle or {}
            if (seconds := _num(lc.get("seconds"))) is not None:
                duration.add_metric([name], seconds)
            if (tried := _ts(lc.get("time"))) is not None:
                attempt.add_metric([name], tried)
            failures.add_metric([name], int(lc.get("failures", 0)) if lc.get("error") else 0)
            done = last_success.get(m.id)
            if done is not None:
                for family, key in figures:
                    if (value := _num(done.get(key))) is not None:
                        family.add_metric([name], value)
            for status in (*HEALTH_STATUSES, *([verdict.status] if verdict.status not in HEALTH_STATUSES
                                               else [])):
                health.add_metric([name, status], 1 if status == verdict.status else 0)
            for st in (*states, *([m.state] if m.state not in states else [])):
                state.add_metric([name, st], 1 if st == m.state else 0)
            rp = m.replica or {}
            target = str(rp.get("target") or "")
            if target and not rp.get("dropped_at"):
                held = _ts(rp.get("point_time"))
                if newest is not None and held is not None:
                    lag.add_metric([name, target], max(0.0, newest - held))
                replica_err.add_metric([name, target], 1 if rp.get("error") else 0)
        yield from (info, rpo, last_point, threshold, npoints, duration, attempt, failures,
                    read, changed, stored, health, state, lag, replica_err)

    def _jobs(self, jobs: _Jobs, now: float) -> Iterable[Metric]:
        counts = GaugeMetricFamily("rehost_jobs", "Jobs the vault keeps, by kind and state (a gauge: "
                                   "old scheduled cycles are forgotten).", labels=["kind", "state"])
        kinds = sorted({kind for kind, _ in jobs.counts})
        for kind in kinds:
            for st in (*JOB_STATES, *sorted({s for k, s in jobs.counts if k == kind} - set(JOB_STATES))):
                counts.add_metric([kind, st], jobs.counts.get((kind, st), 0))
        running = GaugeMetricFamily("rehost_jobs_running", "Jobs running now (their runner holds the "
                                    "job's lease), all kinds.")
        running.add_metric([], sum(len(v) for v in jobs.running_since.values()))
        oldest = GaugeMetricFamily("rehost_jobs_oldest_running_seconds", "How long the oldest running "
                                   "job of each kind has been running.", labels=["kind"])
        for kind, since in sorted(jobs.running_since.items()):
            oldest.add_metric([kind], max(0.0, now - min(since)))
        yield from (counts, running, oldest)

    def _workers(self, rows: list[LeaseRow], now: float) -> Iterable[Metric]:
        up = GaugeMetricFamily("rehost_worker_up", "1 for each rehost worker (host:pid) whose lease "
                               "worker:<host>:<pid> is live; 0 for an hour after a worker's lease "
                               "lapsed without being released.", labels=["worker"])
        held = GaugeMetricFamily("rehost_process_leases", "Live leases per holding process (host:pid) "
                                 "and resource kind (machine, job, writer, reader, prune, scheduler, "
                                 "worker): which processes hold work now.", labels=["process", "kind"])
        by_kind = GaugeMetricFamily("rehost_leases", "Leases in the vault by resource kind, live or "
                                    "stale (expired, or held by a process gone from this host).",
                                    labels=["kind", "state"])
        per_process: dict[tuple[str, str], int] = defaultdict(int)
        per_kind: dict[tuple[str, str], int] = defaultdict(int)
        for r in rows:
            kind = r.resource.partition(":")[0]
            stale = self._stale(r, now)
            per_kind[(kind, "stale" if stale else "live")] += 1
            if not stale:
                per_process[(process_of(r.holder), kind)] += 1
            if kind == "worker":
                worker = r.resource.partition(":")[2]
                if not stale:
                    up.add_metric([worker], 1)
                elif now - r.expires_at <= WORKER_GONE_SHOWN_S:
                    up.add_metric([worker], 0)
        for key, n in sorted(per_process.items()):
            held.add_metric(list(key), n)
        for key, n in sorted(per_kind.items()):
            by_kind.add_metric(list(key), n)
        yield from (up, held, by_kind)

    def _scheduler(self, rows: list[LeaseRow], now: float) -> Iterable[Metric]:
        up = GaugeMetricFamily("rehost_scheduler_up", "1 when a rehost serve process holds the vault's "
                               "scheduler lease (one scheduler per vault), else 0.")
        leader = any(r.resource == "scheduler" and not self._stale(r, now) for r in rows)
        up.add_metric([], 1 if leader else 0)
        yield up
        beat = self.vault.scheduler_heartbeat()
        if beat is not None:
            ts = beat.timestamp()
            age = GaugeMetricFamily("rehost_scheduler_last_tick_age_seconds", "Seconds since the "
                                    "scheduler's last tick (its heartbeat in the vault folder of the "
                                    "answering process); absent when it never ran there.")
            age.add_metric([], max(0.0, now - ts))
            last = GaugeMetricFamily("rehost_scheduler_last_tick_timestamp_seconds",
                                     "Unix time of the scheduler's last tick.")
            last.add_metric([], ts)
            yield from (age, last)


router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "The metrics in the Prometheus text format (docs/metrics.md)",
                     "content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, vault: VaultDep, _: Reader) -> Response:
    """The vault's replication state for Prometheus: any token (a reader's suffices), sent as
    ``Authorization: Bearer`` (``authorization`` or ``bearer_token_file`` in the scrape config)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(VaultCollector(vault)), media_type=content_type)
