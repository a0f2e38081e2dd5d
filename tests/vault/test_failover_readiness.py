"""The readiness step that opens every (test) failover, on the memory target (fast, no QEMU).

The memory double stands in for Azure and is judged by Azure's rules here; the point's
inspection is a hand-made one in the point's cache (``tests/inspections.py``), so no
libguestfs appliance starts. A failing requirement stops the job before anything is made on
the target (or the source shut down); ``--force-readiness`` with a reason goes on and
records both; warnings and an inspection that cannot run never block.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rehost.errors import UsageError
from rehost.jobs.models import JobRow, StepRow
from rehost.jobs.runner import run_job
from rehost.vault import failover, protection
from rehost.vault import readiness as vault_readiness
from rehost.vault.inventory import get_machine
from tests.inspections import UNREADY_FOR_AZURE, WARNED_FOR_AZURE, judge_memory_as_azure, seed
from tests.targets.helpers import World, world

FAILED = ("hv_storvsc driver", "hv_netvsc driver", "DHCP on the primary NIC")


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, "memory", markers=("first",)) as w:
        yield w


def _run(w: World, kind: str, **params: object) -> JobRow:
    return run_job(w.vault, failover.start_job(w.vault, kind, w.machine, **params).id)


def _step(job: JobRow, name: str) -> tuple[str, str]:
    s = next(s for s in job.steps if s.name == name)
    return s.state, s.detail


@pytest.mark.parametrize("kind", ["test-failover", "failover"])
def test_a_failing_requirement_stops_the_failover_before_anything_is_made(
        w: World, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    judge_memory_as_azure(monkeypatch)
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
    job = _run(w, kind, shutdown_source=True)
    assert job.state == "failed"
    assert _step(job, "readiness")[0] == "failed"
    for name in FAILED:  # each failed requirement, with its fix
        assert name in job.error
    assert "update-initramfs" in job.error and "switch eth0 to DHCP" in job.error
    assert "--force-readiness --reason TEXT" in job.error and ("--test" in job.error) == (kind != "failover")
    assert [s.state for s in job.steps[1:]] == ["pending"] * (len(job.steps) - 1)
    assert [r["name"] for r in job.outputs["readiness"]["failed"]] == list(FAILED)
    # nothing made on the target, the source not shut down, no final sync, the item untouched
    assert not any(w.target_path.glob("web*"))
    assert [p.id for p in protection.list_points(w.vault, "web")] == w.points
    m = get_machine(w.vault, "web")
    assert m.state == "protected" and m.state_reason == ""


def test_forced_with_a_reason_goes_on_and_records_reason_and_failures(
        w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    judge_memory_as_azure(monkeypatch)
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
    with pytest.raises(UsageError, match="needs --reason"):
        failover.start_job(w.vault, "test-failover", "web", readiness_force_reason="  ")
    job = _run(w, "test-failover", readiness_force_reason=" hv drivers are built into our kernel ")
    assert job.state == "succeeded", job.error
    reason = "hv drivers are built into our kernel"
    assert job.params["readiness_forced"] == {"reason": reason}
    record = job.outputs["readiness"]
    assert record["forced"] == {"reason": reason} and record["status"] == "fail"
    assert [r["name"] for r in record["failed"]] == list(FAILED) and all(r["fix"] for r in record["failed"])
    state, detail = _step(job, "readiness")
    assert state == "succeeded" and "FORCED past the failed requirement(s)" in detail
    assert all(name in detail for name in FAILED) and detail.endswith(f"reason: {reason}")
    assert (w.target_path / "web-test").is_dir()  # it went on: the test machine was made
    m = get_machine(w.vault, "web")
    assert m.state == "test_failover" and f"3 readiness requirement(s) failed: {reason}" in m.state_reason


def test_warnings_do_not_block_and_are_shown(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    judge_memory_as_azure(monkeypatch)
    seed(w.vault, "web", w.points[-1], WARNED_FOR_AZURE)
    job = _run(w, "test-failover")
    assert job.state == "succeeded", job.error
    state, detail = _step(job, "readiness")
    assert state == "succeeded" and "warn (" in detail and "cached inspection" in detail
    assert "warnings: serial console on ttyS0: no console=ttyS0" in detail
    assert "readiness_forced" not in job.params and "forced" not in job.outputs["readiness"]
    assert [r["name"] for r in job.outputs["readiness"]["warnings"]] == ["serial console on ttyS0"]


def test_an_inspection_that_cannot_run_does_not_block(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached inspection and no libguestfs: the real inspector fails, the step warns."""
    judge_memory_as_azure(monkeypatch)
    monkeypatch.delenv(vault_readiness.INSPECT_ENV, raising=False)  # tests/conftest.py sets it
    monkeypatch.setitem(sys.modules, "guestfs", None)  # import guestfs raises ImportError
    job = _run(w, "test-failover")
    assert job.state == "succeeded", job.error
    state, detail = _step(job, "readiness")
    assert state == "succeeded" and "not inspected: libguestfs is not installed" in detail
    warning = job.outputs["readiness"]["warnings"][0]
    assert warning["name"] == "inspection" and "rehost readiness web" in warning["fix"]
    assert not vault_readiness.cache_path(w.vault, "web", w.points[-1]).exists()  # nothing cached


def test_a_target_whose_guests_need_nothing_is_not_inspected(w: World) -> None:
    job = _run(w, "test-failover")
    assert job.state == "succeeded", job.error
    assert "no inspection needed (memory targets)" in _step(job, "readiness")[1]
    assert not vault_readiness.cache_path(w.vault, "web", w.points[-1]).exists()


def test_resume_checks_again(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job the readiness step stopped, resumed once the source is fixed and replicated:
    the step runs again on the newest point, and that point is the one failed over."""
    judge_memory_as_azure(monkeypatch)
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
    job = _run(w, "test-failover")
    assert job.state == "failed"
    fixed = w.replicate("second")
    seed(w.vault, "web", fixed, WARNED_FOR_AZURE)
    job = run_job(w.vault, job.id)  # what rehost job resume does
    assert job.state == "succeeded", job.error
    assert job.outputs["readiness"]["point"] == job.outputs["point"] == fixed
    assert "REHOST-BOOT-OK marker=second" in _step(job, "verify_boot")[1]


def test_with_inspection_off_a_point_not_inspected_yet_is_a_warning(
        w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    judge_memory_as_azure(monkeypatch)
    monkeypatch.setenv(vault_readiness.INSPECT_ENV, "off")
    job = _run(w, "test-failover")
    assert job.state == "succeeded", job.error
    detail = _step(job, "readiness")[1]
    assert "not inspected: REHOST_READINESS_INSPECT=off (rehost readiness web inspects the point)" in detail
    assert _run(w, "test-cleanup").state == "succeeded"
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)  # a cached inspection still counts
    assert _run(w, "test-failover").state == "failed"


def test_a_job_made_before_the_readiness_step_resumes_with_its_own_steps(w: World) -> None:
    """A failover cut short under the previous version is resumed after an upgrade: it has
    no readiness step, and the runner refuses a job whose steps changed."""
    job = failover.start_job(w.vault, "test-failover", w.machine)
    with w.vault.session() as s, s.begin():
        steps = sorted(s.scalars(select(StepRow).where(StepRow.job_id == job.id)), key=lambda r: r.index)
        assert steps[0].name == "readiness"
        s.delete(steps[0])
        for row in steps[1:]:
            row.index -= 1
    job = run_job(w.vault, job.id)
    assert job.state == "succeeded", job.error
    assert [s.name for s in job.steps][:2] == ["prerequisites", "choose_point"]
    assert "readiness" not in job.outputs


def test_what_is_known_of_the_newest_point(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The item view's summary: from the cache only, of the newest point, for its target."""
    assert vault_readiness.known(w.vault, "web") == {  # the memory double's guests need nothing
        "point": w.points[-1], "target": "t", "status": "pass", "failed": [], "warnings": 0, "text": "pass"}
    judge_memory_as_azure(monkeypatch)
    assert vault_readiness.known(w.vault, "web")["status"] == "not inspected"  # type: ignore[index]
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
    k = vault_readiness.known(w.vault, "web")
    assert k is not None and k["text"] == "fail (3)" and k["failed"] == list(FAILED)
    w.replicate("second")  # a newer point, not inspected yet
    assert vault_readiness.known(w.vault, "web")["status"] == "not inspected"  # type: ignore[index]
    seed(w.vault, "web", w.points[-1], WARNED_FOR_AZURE)
    assert vault_readiness.known(w.vault, "web")["text"] == "warn (1)"  # type: ignore[index]
