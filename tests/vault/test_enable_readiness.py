"""Readiness at enable time: the first replication of a machine that has a target checks its
first point for that target (a warning on the job, never a failed replication); later cycles
do not. The inspection is a hand-made one (``tests/inspections.py``): no appliance starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from rehost.guest.inspect import Inspection
from rehost.jobs.runner import run_job
from rehost.vault import cycles, inventory, targets
from rehost.vault import readiness as vault_readiness
from rehost.vault.vault import Vault
from tests.inspections import UNREADY_FOR_AZURE, WARNED_FOR_AZURE, judge_memory_as_azure
from tests.targets.helpers import make_disk


def _vault(tmp_path: Path, with_target: bool = True) -> Vault:
    vault = Vault.init(tmp_path / "vault")
    inventory.add_image_source(vault, "web", [make_disk(tmp_path / "web.img", "first")])
    if with_target:
        targets.add_target(vault, "memory", "t", {"path": tmp_path / "target"})
    return vault


def _inspect_as(ins: Inspection, calls: list[str]) -> object:
    def inspector(disks: Sequence[str], name: str) -> Inspection:
        calls.append(name)
        return ins
    return inspector


@pytest.mark.parametrize(("guest", "state", "says"), [
    (UNREADY_FOR_AZURE, "warning", "hv_storvsc driver"),
    (WARNED_FOR_AZURE, "succeeded", "warn"),
])
def test_the_first_point_is_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         guest: Inspection, state: str, says: str) -> None:
    judge_memory_as_azure(monkeypatch)
    monkeypatch.delenv(vault_readiness.INSPECT_ENV, raising=False)
    calls: list[str] = []
    monkeypatch.setattr(vault_readiness, "inspect_disks", _inspect_as(guest, calls))
    vault = _vault(tmp_path)
    try:
        job = cycles.start_replicate_job(vault, "web")
        done = run_job(vault, job.id)
        assert done.state == "succeeded"  # a guest that will not boot is a warning, not a failed cycle
        step = next(s for s in done.steps if s.name == "readiness")
        assert step.state == state and says in step.detail and "for target t" in step.detail
        assert len(calls) == 1
        # the item view now knows it, without inspecting again
        known = vault_readiness.known(vault, "web")
        assert known is not None and known["status"] == ("fail" if state == "warning" else "warn")
        # later cycles are not checked
        again = run_job(vault, cycles.start_replicate_job(vault, "web").id)
        assert [s.name for s in again.steps] == ["replicate"] and len(calls) == 1
    finally:
        vault.close()


def test_no_target_no_check(tmp_path: Path) -> None:
    vault = _vault(tmp_path, with_target=False)
    try:
        job = cycles.start_replicate_job(vault, "web")
        assert [s.name for s in job.steps] == ["replicate"] and "readiness_target" not in job.params
    finally:
        vault.close()
