from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rehost.replication.health import HealthInput, assess

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _h(**kw: object) -> HealthInput:
    base: dict[str, object] = {"state": "protected", "last_point": NOW - timedelta(seconds=20),
                               "last_app_point": None, "rpo_threshold_s": 300.0,
                               "scheduler_seen": NOW - timedelta(seconds=1)}
    base.update(kw)
    return HealthInput(**base)  # type: ignore[arg-type]


def test_within_rpo_is_healthy() -> None:
    h = assess(_h(), NOW)
    assert h.status == "healthy" and h.rpo_s == 20 and h.reason == ""


def test_warning_and_critical_with_the_likely_cause() -> None:
    h = assess(_h(last_point=NOW - timedelta(minutes=7), scheduler_seen=None), NOW)
    assert h.status == "warning" and "no scheduler is running" in h.reason
    h = assess(_h(last_point=NOW - timedelta(minutes=11), last_attempt=NOW - timedelta(seconds=5),
                  last_error="qemu-nbd could not serve disk0: No such file"), NOW)
    assert h.status == "critical" and "last cycle failed" in h.reason and "No such file" in h.reason
    h = assess(_h(last_point=NOW - timedelta(minutes=6), last_cycle_s=400.0), NOW)
    assert "longer than the threshold" in h.reason


def test_app_consistent_overdue_and_stopped_replication() -> None:
    h = assess(_h(app_every_s=3600.0, last_app_point=NOW - timedelta(hours=3)), NOW)
    assert h.status == "warning" and "app-consistent points overdue" in h.reason
    assert assess(_h(state="failed_over"), NOW).status == "not-protected"
    assert assess(_h(last_point=None), NOW).status == "not-protected"
    assert assess(_h(rpo_threshold_s=None, last_point=NOW - timedelta(days=3)), NOW).status == "healthy"


def test_an_agent_that_does_not_answer_is_named_with_backoff_and_since_when() -> None:
    down = {"agent": True, "agent_error": "srv1's agent at 10.0.0.5:8743 is unreachable: timed out"}
    h = assess(_h(agent_seen=NOW - timedelta(minutes=3), **down), NOW)
    assert h.status == "warning"  # within the RPO still, but the next cycle will fail
    assert "has not answered since 3m ago" in h.reason and "unreachable: timed out" in h.reason
    h = assess(_h(last_point=NOW - timedelta(minutes=11), **down), NOW)
    assert h.status == "critical" and "since it registered" in h.reason
    h = assess(_h(last_point=None, **down), NOW)
    assert h.status == "critical" and "initial replication waits for the agent" in h.reason
    assert assess(_h(rpo_threshold_s=None, **down), NOW).status == "warning"
    h = assess(_h(last_point=NOW - timedelta(minutes=7), last_attempt=NOW - timedelta(seconds=5),
                  last_error="boom", failures=4), NOW)
    assert "4 failures in a row" in h.reason
    assert assess(_h(agent=True, agent_seen=NOW), NOW).status == "healthy"



def test_a_replica_that_lags_names_its_target_and_the_last_error() -> None:
    last = NOW - timedelta(seconds=20)
    # in step: the replica holds the newest point
    assert assess(_h(replica_target="az", replica_point_time=last), NOW).status == "healthy"
    # the sync right after a cycle has not run yet: not a lag worth a warning
    pending = _h(replica_target="az", replica_point_time=last - timedelta(seconds=60))
    assert assess(pending, NOW).status == "healthy"
    # the last sync failed: warning, with the target, what it holds and the error
    h = assess(_h(replica_target="az", replica_point_time=last - timedelta(seconds=600),
                  replica_error="BackendError: 503 ServerBusy"), NOW)
    assert h.status == "warning"
    assert "replica on target az is behind" in h.reason and "10m ago" in h.reason and "ServerBusy" in h.reason
    # never synced, and the newest point is old enough that the sync should have run
    h = assess(_h(replica_target="az", last_point=NOW - timedelta(seconds=400)), NOW)
    assert h.status in ("warning", "critical") and "holds no point yet" in h.reason
    # no policy: still said
    h = assess(_h(replica_target="az", rpo_threshold_s=None, replica_error="boom"), NOW)
    assert h.status == "warning" and "boom" in h.reason
    # no replica kept (local target): nothing said
    h = assess(_h(replica_error="x"), NOW)
    assert h.status == "healthy" and "replica" not in h.reason
