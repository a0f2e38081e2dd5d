"""A ``rehost replicate`` (or ``failover``) killed after it queued its job but before it
started it (no broker: the queuing process runs the job itself) must not leave the machine
busy forever: its job is interrupted and the next operation goes on. A job queued by a live
process still holds the machine. (Found by tests/vault/test_crash_safety.py's random kills.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rehost.errors import InvalidState
from rehost.jobs import leases
from rehost.jobs.runner import effective_state, get_job, run_job, running_jobs
from rehost.vault import cycles, failover, inventory, targets
from rehost.vault.vault import Vault
from tests.targets.helpers import make_disk


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_queued_job_of_a_dead_process_does_not_hold_the_machine(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        inventory.add_image_source(vault, "web", [make_disk(tmp_path / "web.img", "first")])
        machine = inventory.get_machine(vault, "web")
        live = cycles.start_replicate_job(vault, "web")  # queued by this (live) process
        assert live.holder and leases.holder_dead(live.holder) is False
        with pytest.raises(InvalidState, match=f"web has a replicate job running \\({live.id}\\)"):
            cycles.start_replicate_job(vault, "web")
        assert run_job(vault, live.id).state == "succeeded"

        dead = f"{leases.new_holder().split(':')[0]}:{_dead_pid()}:0000"
        monkeypatch.setattr(leases, "new_holder", lambda: dead)
        orphan = cycles.start_replicate_job(vault, "web")  # as if its process was killed now
        monkeypatch.undo()
        assert effective_state(get_job(vault, orphan.id)) == "interrupted"
        assert running_jobs(vault, machine.id) == []
        again = cycles.start_replicate_job(vault, "web")
        assert run_job(vault, again.id).state == "succeeded"
    finally:
        vault.close()


def test_a_failover_job_queued_by_a_dead_process_does_not_hold_the_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        inventory.add_image_source(vault, "web", [make_disk(tmp_path / "web.img", "first")])
        machine = inventory.get_machine(vault, "web")
        targets.assign(vault, machine, targets.add_target(vault, "memory", "t", {"path": tmp_path / "t"}), {})
        assert run_job(vault, cycles.start_replicate_job(vault, "web").id).state == "succeeded"

        dead = f"{leases.new_holder().split(':')[0]}:{_dead_pid()}:0000"
        monkeypatch.setattr(leases, "new_holder", lambda: dead)
        orphan = failover.start_job(vault, "test-failover", "web", target="t")
        monkeypatch.undo()
        assert effective_state(get_job(vault, orphan.id)) == "interrupted"
        assert running_jobs(vault, machine.id) == []
        test = run_job(vault, failover.start_job(vault, "test-failover", "web", target="t").id)
        assert test.state == "succeeded", [st.detail for st in test.steps]
        assert run_job(vault, failover.start_job(vault, "test-cleanup", "web").id).state == "succeeded"
    finally:
        vault.close()
