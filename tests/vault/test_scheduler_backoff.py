"""After failures in a row the scheduler waits longer and longer before trying again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rehost.vault.models import MachineRow, PolicyRow
from rehost.vault.scheduler import BACKOFF_MAX_S, Scheduler, backoff
from rehost.vault.vault import Vault


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff(30) == BACKOFF_MAX_S == backoff(10_000)


def test_due_waits_the_backoff_after_failures(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    try:
        t0 = 1_800_000_000.0
        now = [t0]
        sched = Scheduler(vault, clock=lambda: now[0])
        policy = PolicyRow(name="p", crash_consistent_every_s=30, app_consistent_every_s=0)
        failed = datetime.fromtimestamp(t0, UTC).isoformat()
        m = MachineRow(name="m", last_cycle={"time": failed, "error": "agent unreachable", "failures": 4})
        for wait, due in ((1.0, False), (39.0, False), (40.5, True)):
            now[0] = t0 + wait
            assert sched.due(m, policy, [])[0] is due, wait
        m.last_cycle = {"time": failed, "error": "x", "failures": 1}
        now[0] = t0 + 5.5
        assert sched.due(m, policy, [])[0]
    finally:
        vault.close()
