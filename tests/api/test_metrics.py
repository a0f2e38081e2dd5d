"""GET /metrics: the vault's records as Prometheus metrics (docs/metrics.md).

Machines are replicated by the real scheduler and job runner into a real vault, then the
portal is scraped with a reader token and the text is parsed by prometheus_client's own
parser, so what is checked is what Prometheus would store.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlalchemy.engine import Engine

from rehost.api.tokens import create_token
from rehost.jobs import leases, runner
from rehost.jobs.models import JobRow, LeaseRow
from rehost.vault import inventory, policies, targets
from rehost.vault.cycles import REPLICATE
from rehost.vault.scheduler import Scheduler, TickResult
from rehost.vault.vault import Vault
from tests.api.portal import MiB, Portal, make_disk, make_vault, portal_for

Labels = dict[str, str]


class Scrape:
    """One parsed scrape: sample name -> [(labels, value)]."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[Labels, float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.setdefault(s.name, []).append((dict(s.labels), s.value))

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one series of ``name`` whose labels include ``labels``; None if absent."""
        found = [v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items()]
        assert len(found) <= 1, f"{name} {labels}: {found}"
        return found[0] if found else None

    def series(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])


def scrape(portal: Portal, role: str = "reader") -> Scrape:
    r = portal.client.get("/metrics", headers=portal.auth(role))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


def tick(portal: Portal, clock: Callable[[], float] = time.time) -> list[TickResult]:
    """One scheduling pass of the real scheduler over the portal's vault, waiting for its cycles."""
    vault = portal.open_vault()
    try:
        scheduler = Scheduler(vault, clock=clock)
        try:
            return scheduler.tick(wait=True)
        finally:
            scheduler.close()
    finally:
        vault.close()


@pytest.fixture
def scheduled(tmp_path: Path) -> Iterator[Portal]:
    """Machine ``web`` under policy ``gold`` (RPO 5 minutes), not replicated yet."""
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"), replicate=False)
    vault = Vault.open(tmp_path / "vault")
    try:
        policies.create_policy(vault, "gold", rpo_threshold="5m")
        policies.attach(vault, "web", "gold")
    finally:
        vault.close()
    with portal_for(tmp_path, tokens) as p:
        yield p


def test_metrics_need_a_token_and_a_reader_suffices(scheduled: Portal) -> None:
    c = scheduled.client
    r = c.get("/metrics")
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    assert c.get("/metrics", headers={"Authorization": "Bearer rh_nosuchtoken"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Basic cm9vdDpyb290"}).status_code == 401
    for role in ("reader", "operator", "admin"):
        assert scrape(scheduled, role).get("rehost_item_points", machine="web") == 0
    r = c.get("/metrics", headers={**scheduled.auth("reader"), "Accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    doc = c.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert {"200", "401", "403"} <= set(doc["responses"])


def test_a_scheduled_cycle_shows_in_the_metrics(scheduled: Portal) -> None:
    before = scrape(scheduled)
    assert before.get("rehost_item_points", machine="web") == 0
    assert before.get("rehost_item_rpo_age_seconds", machine="web") is None  # no point, no age
    assert before.get("rehost_item_health", machine="web", status="not-protected") == 1
    assert before.get("rehost_item_health", machine="web", status="healthy") == 0
    assert before.get("rehost_item_state", machine="web", state="registered") == 1
    assert before.get("rehost_item_rpo_threshold_seconds", machine="web", policy="gold") == 300
    assert before.series("rehost_jobs") == []
    assert before.get("rehost_scheduler_up") == 0

    [result] = tick(scheduled)
    assert result.ran and not result.error, result
    m = scrape(scheduled)
    assert m.get("rehost_item_info", machine="web", source="web", source_kind="image", policy="gold") == 1
    rpo = m.get("rehost_item_rpo_age_seconds", machine="web")
    assert rpo is not None and 0 < rpo < 60
    newest = m.get("rehost_item_last_point_timestamp_seconds", machine="web")
    assert newest is not None and abs(time.time() - rpo - newest) < 5
    # the API's health says the same RPO (both computed from the same point)
    api_rpo = scheduled.get("/machines/web").json()["health"]["rpo_seconds"]
    assert abs(api_rpo - rpo) < 5
    assert m.get("rehost_item_points", machine="web") == 1
    read = m.get("rehost_item_last_cycle_read_bytes", machine="web")
    changed = m.get("rehost_item_last_cycle_changed_bytes", machine="web")
    stored = m.get("rehost_item_last_cycle_stored_bytes", machine="web")
    assert read is not None and read >= 256 * 1024  # the disk's data (the rest is a hole)
    assert changed is not None and changed >= 256 * 1024  # the first cycle: all of it is new
    assert stored is not None and stored > 0
    duration = m.get("rehost_item_last_cycle_duration_seconds", machine="web")
    assert duration is not None and 0 < duration < 60
    attempt = m.get("rehost_item_last_cycle_timestamp_seconds", machine="web")
    assert attempt is not None and abs(time.time() - attempt) < 60
    assert m.get("rehost_item_consecutive_cycle_failures", machine="web") == 0
    assert m.get("rehost_item_health", machine="web", status="healthy") == 1
    assert sum(v for _, v in m.series("rehost_item_health")) == 1
    assert m.get("rehost_item_state", machine="web", state="protected") == 1
    assert sum(v for _, v in m.series("rehost_item_state")) == 1
    assert m.get("rehost_jobs", kind=REPLICATE, state="succeeded") == 1
    assert m.get("rehost_jobs", kind=REPLICATE, state="failed") == 0
    assert m.get("rehost_jobs_running") == 0
    age = m.get("rehost_scheduler_last_tick_age_seconds")
    assert age is not None and 0 <= age < 60
    assert m.series("rehost_item_replica_lag_seconds") == []  # a local target keeps no replica
    took = m.get("rehost_metrics_collect_seconds")
    assert took is not None and took > 0


def test_a_failing_cycle_raises_the_failure_gauge(scheduled: Portal, tmp_path: Path) -> None:
    [ok] = tick(scheduled)
    assert not ok.error
    (tmp_path / "disk.raw").unlink()  # the source is gone: every cycle fails now
    start = time.time()
    [failed] = tick(scheduled, clock=lambda: time.time() + 60)  # past the 30 s cycle interval
    assert failed.error
    m = scrape(scheduled)
    assert m.get("rehost_item_consecutive_cycle_failures", machine="web") == 1
    assert m.get("rehost_jobs", kind=REPLICATE, state="failed") == 1
    assert m.get("rehost_jobs", kind=REPLICATE, state="succeeded") == 1
    # the bytes are those of the last cycle that succeeded; the duration is the failed one's
    stored = m.get("rehost_item_last_cycle_stored_bytes", machine="web")
    assert stored is not None and stored > 0
    assert m.get("rehost_item_last_cycle_duration_seconds", machine="web") is not None
    # the next failure after the back-off (5 s after the first): two in a row
    [again] = tick(scheduled, clock=lambda: time.time() + 120)
    assert again.error
    m = scrape(scheduled)
    assert m.get("rehost_item_consecutive_cycle_failures", machine="web") == 2
    assert m.get("rehost_jobs", kind=REPLICATE, state="failed") == 2
    # the point is still young: health stays healthy until the RPO is missed
    rpo = m.get("rehost_item_rpo_age_seconds", machine="web")
    assert rpo is not None and rpo < 300 + (time.time() - start)


def test_jobs_by_state_include_derived_ones(scheduled: Portal) -> None:
    """Queued, running (its runner holds the lease) and interrupted (running, lease lapsed)."""
    vault = scheduled.open_vault()
    held: leases.Lease | LeaseRow | None = None
    try:
        machine = inventory.get_machine(vault, "web")
        queued = runner.create_job(vault, REPLICATE, machine.id, "web", {})
        running = runner.create_job(vault, REPLICATE, machine.id, "web", {})
        dead = runner.create_job(vault, REPLICATE, machine.id, "web", {})
        long_ago = datetime.now(UTC) - timedelta(seconds=100)
        with vault.session() as s, s.begin():
            for job_id in (running.id, dead.id):
                row = s.get(JobRow, job_id)
                assert row is not None
                row.state, row.started_at = "running", long_ago
        held = leases.try_acquire(vault, f"job:{running.id}", REPLICATE, job_id=running.id)
        assert isinstance(held, leases.Lease)
        m = scrape(scheduled)
        assert m.get("rehost_jobs", kind=REPLICATE, state="queued") == 1
        assert m.get("rehost_jobs", kind=REPLICATE, state="running") == 1
        assert m.get("rehost_jobs", kind=REPLICATE, state="interrupted") == 1
        assert m.get("rehost_jobs", kind=REPLICATE, state="succeeded") == 0
        assert m.get("rehost_jobs_running") == 1
        oldest = m.get("rehost_jobs_oldest_running_seconds", kind=REPLICATE)
        assert oldest is not None and 95 < oldest < 160
        me = f"{socket.gethostname()}:{os.getpid()}"
        assert m.get("rehost_process_leases", process=me, kind="job") == 1
        assert queued.state == "queued"
    finally:
        if isinstance(held, leases.Lease):
            held.release()
        vault.close()


def test_workers_and_the_scheduler_show_by_their_leases(scheduled: Portal) -> None:
    """A worker registers ``worker:<host>:<pid>`` (rehost worker does); a killed one leaves
    its lease to lapse: 0 for an hour, then gone."""
    vault = scheduled.open_vault()
    taken: list[leases.Lease] = []
    try:
        for resource, operation in (("worker:otherhost:4242", "worker"), ("scheduler", "scheduler")):
            lease = leases.try_acquire(vault, resource, operation)
            assert isinstance(lease, leases.Lease)
            taken.append(lease)
        now = time.time()
        with vault.session() as s, s.begin():
            for resource, lapsed in (("worker:gonehost:7", 60), ("worker:oldhost:8", 7200)):
                s.add(LeaseRow(resource=resource, holder=f"{resource[7:]}:beef", operation="worker",
                               acquired_at=now - lapsed - 100, expires_at=now - lapsed))
        m = scrape(scheduled)
        assert m.get("rehost_worker_up", worker="otherhost:4242") == 1
        assert m.get("rehost_worker_up", worker="gonehost:7") == 0
        assert m.get("rehost_worker_up", worker="oldhost:8") is None
        assert m.get("rehost_scheduler_up") == 1
        me = f"{socket.gethostname()}:{os.getpid()}"
        assert m.get("rehost_process_leases", process=me, kind="worker") == 1
        assert m.get("rehost_process_leases", process=me, kind="scheduler") == 1
        assert m.get("rehost_process_leases", process="gonehost:7", kind="worker") is None
        assert m.get("rehost_leases", kind="worker", state="live") == 1
        assert m.get("rehost_leases", kind="worker", state="stale") == 2
        for lease in taken:
            lease.release()
        taken.clear()
        m = scrape(scheduled)
        assert m.get("rehost_worker_up", worker="otherhost:4242") is None
        assert m.get("rehost_scheduler_up") == 0
    finally:
        for lease in taken:
            lease.release()
        vault.close()


class StatementCounter:
    """SQL statements every engine of this process runs while it is entered."""

    def __init__(self) -> None:
        self.count = 0

    def _count(self, *_args: object) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        event.listen(Engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._count)


def _fleet(root: Path, machines: int, workers: int) -> dict[str, str]:
    """``machines`` image machines of tiny sparse disks under one policy, each replicated once
    by one scheduler tick; and a token per role."""
    vault = Vault.init(root / "vault")
    try:
        targets.add_local_target(vault, "here", root / "target")
        policies.create_policy(vault, "gold")
        for i in range(machines):
            disk = root / f"disk{i}.raw"
            with open(disk, "wb") as f:
                f.truncate(MiB)
                f.write(f"machine {i}".encode())
            inventory.add_image_source(vault, f"m{i:03d}", [disk])
            policies.attach(vault, f"m{i:03d}", "gold")
        scheduler = Scheduler(vault, workers=workers)
        try:
            results = scheduler.tick(wait=True)
        finally:
            scheduler.close()
        assert len(results) == machines and not [r for r in results if r.error]
        return {"reader": create_token(vault, "reader-token", "reader")[1]}
    finally:
        vault.close()


def _timed_scrape(portal: Portal) -> tuple[float, int, Scrape]:
    with StatementCounter() as statements:
        started = time.perf_counter()
        m = scrape(portal)
        took = time.perf_counter() - started
    return took, statements.count, m


def test_a_scrape_costs_the_same_queries_for_3_machines_as_for_1(tmp_path: Path) -> None:
    counts = []
    for n in (1, 3):
        root = tmp_path / f"fleet{n}"
        with portal_for(root, _fleet(root, n, workers=2)) as portal:
            scrape(portal)  # the pooled vault is open and its points decoded
            counts.append(_timed_scrape(portal)[1])
    assert counts[0] == counts[1], counts


@pytest.mark.slow
def test_a_scrape_of_200_machines_stays_cheap(tmp_path: Path) -> None:
    """200 machines replicated once each: the scrape's time is printed (run with -s), and
    bounded only very loosely (a loaded CI host must not fail it); its queries do not grow
    with the machines."""
    started = time.perf_counter()
    tokens = _fleet(tmp_path, 200, workers=16)
    print(f"\n200 machines made and replicated in {time.perf_counter() - started:.1f}s")
    with portal_for(tmp_path, tokens) as portal:
        cold, cold_statements, m = _timed_scrape(portal)
        warm = [_timed_scrape(portal) for _ in range(5)]
        lines = m.text.count("\n")
        print(f"scrape of 200 machines: first {cold * 1000:.0f} ms ({cold_statements} SQL statements), "
              f"then {', '.join(f'{t * 1000:.0f}' for t, _, _ in warm)} ms; "
              f"{lines} lines, {len(m.text) // 1024} KiB; collect "
              f"{(m.get('rehost_metrics_collect_seconds') or 0) * 1000:.0f} ms")
        assert len(m.series("rehost_item_points")) == 200
        assert all(v == 1 for _, v in m.series("rehost_item_points"))
        assert m.get("rehost_jobs", kind=REPLICATE, state="succeeded") == 200
        assert {n for _, n, _ in warm} == {warm[0][1]} and warm[0][1] < 20
        assert max(t for t, _, _ in warm) < 30  # generous: about 0.1 s on a development host
