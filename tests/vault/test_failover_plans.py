"""The failover services on a stage-then-boot target, fast: the memory target (a labelled test
double, ``rehost.targets.memory``) stands in for Azure, so no QEMU boots here.

Test failover, cleanup, failover and complete; a kill -9 at every step of a failover job
(a child process ends itself right after the step's work, before the runner records it) and
the resumed job's result; faults the target injects; and the conflict rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import InvalidState, UsageError
from rehost.jobs.models import JobRow
from rehost.jobs.runner import cancel_job, effective_state, get_job, live_jobs, run_job
from rehost.targets.memory import MemorySettings, MemoryTarget
from rehost.vault import failover, protection, targets
from rehost.vault.inventory import get_machine
from tests.cli_helpers import REPO, rehost
from tests.targets.helpers import World, make_disk, world

FAILOVER_STEPS = ["readiness", "prerequisites", "shutdown_source", "final_sync", "choose_point",
                  "stop_replication", "stage_disks", "create_machine", "start", "verify_boot", "finish",
                  "checks"]

#: runs a job in a child process and ends that process (os._exit, as a kill -9 would) right
#: after the named step's work, before the runner records the step; or, with "hang", holds
#: the job at that step until the test kills it. It reaches into the runner's plan table
#: (private) because the cut must fall between a step's work and its record.
CHILD = r"""
import dataclasses, os, sys, time
from pathlib import Path
from rehost.jobs import runner
from rehost.vault import failover
from rehost.vault.vault import Vault

vault_path, job_id, step_name, mode = sys.argv[1:5]
vault = Vault.open(Path(vault_path))
kind = runner.get_job(vault, job_id).kind
original = runner._PLANS[kind]

def cut(step):
    def run(ctx):
        if mode == "hang":
            Path(vault_path, "hanging").write_text(step.name)
            time.sleep(600)
        try:
            return step.run(ctx)
        finally:
            os._exit(137)
    return dataclasses.replace(step, run=run)

runner._PLANS[kind] = lambda v, j: [cut(s) if s.name == step_name else s for s in original(v, j)]
runner.run_job(vault, job_id)
"""


def _child(w: World, job: JobRow, step: str, mode: str = "exit") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(w.vault.root), job.id, step, mode], cwd=REPO,
                            stdin=subprocess.DEVNULL)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, "memory") as w:
        yield w


def _run(w: World, kind: str, **params: object) -> JobRow:
    return run_job(w.vault, failover.start_job(w.vault, kind, w.machine, **params).id)


def _steps(job: JobRow) -> dict[str, str]:
    return {s.name: s.detail for s in job.steps}


def _state(w: World) -> str:
    return get_machine(w.vault, w.machine).state


def _staged_equals(w: World, vm: str, image: Path) -> bool:
    return MemoryTarget.disk_path(w.target(), vm, 0).read_bytes() == image.read_bytes()  # type: ignore[arg-type]


def test_test_failover_stages_the_point_and_cleanup_leaves_nothing(w: World, tmp_path: Path) -> None:
    job = _run(w, "test-failover")
    assert job.state == "succeeded", job.error
    assert [s.name for s in job.steps] == ["readiness", "prerequisites", "choose_point", "stage_disks",
                                           "create_machine", "start", "verify_boot", "checks"]
    steps = _steps(job)
    assert "REHOST-BOOT-OK marker=second" in steps["verify_boot"]
    assert "isolated network" in steps["start"]
    assert _staged_equals(w, "web-test", w.image)
    assert _state(w) == "test_failover"

    # replication goes on; a second test failover and a failover are refused with the next step
    points_before = [p.id for p in protection.list_points(w.vault, "web")]
    w.replicate("third")
    with pytest.raises(InvalidState, match=r"already running.*--cleanup"):
        failover.start_job(w.vault, "test-failover", "web")
    with pytest.raises(InvalidState, match="clean it up first"):
        failover.start_job(w.vault, "failover", "web")

    assert _run(w, "test-cleanup").state == "succeeded"
    assert not (w.target_path / "web-test").exists()
    assert _state(w) == "protected"
    assert [p.id for p in protection.list_points(w.vault, "web")][:2] == points_before

    old = _run(w, "test-failover", point=w.points[0][:12])
    assert "marker=first" in _steps(old)["verify_boot"]  # the older point's data "booted"
    assert _run(w, "test-cleanup").state == "succeeded"


def test_a_point_that_does_not_boot_fails_the_verdict(w: World) -> None:
    make_disk(w.image, "broken", bootable=False)
    w.replicate()
    job = _run(w, "test-failover")
    assert job.state == "failed" and "no MBR boot signature" in job.error
    assert next(s for s in job.steps if s.name == "verify_boot").state == "failed"
    assert _run(w, "test-cleanup").state == "succeeded" and _state(w) == "protected"


def test_failover_on_the_mapped_network_then_complete(w: World) -> None:
    machine = get_machine(w.vault, "web")
    with pytest.raises(UsageError, match="does not exist on target t"):
        targets.assign(w.vault, machine, targets.target_of(w.vault, machine), {"default": "internet"})
    targets.assign(w.vault, machine, targets.target_of(w.vault, machine), {"default": "isolated"})
    make_disk(w.image, "final")  # written after the last point: the final sync must catch it
    job = _run(w, "failover", shutdown_source=True)
    assert job.state == "succeeded", job.error
    assert [s.name for s in job.steps] == FAILOVER_STEPS
    steps = _steps(job)
    assert "on the isolated network" in steps["start"] and "marker=final" in steps["verify_boot"]
    assert _staged_equals(w, "web", w.image)
    m = get_machine(w.vault, "web")
    assert m.state == "failed_over" and m.placement["target_name"] == "t"
    assert m.placement["dir"] == str(w.target_path / "web")
    made = json.loads((w.target_path / "web" / "machine.json").read_text())  # the spec crossed the seam
    assert (made["machine"], made["cpus"], made["firmware"], made["disks"]) == ("web", 1, "bios", [0])

    assert _run(w, "complete").state == "succeeded"
    assert _state(w) == "migration_completed" and protection.list_points(w.vault, "web") == []
    assert w.target().find("web") is not None  # the migrated machine is kept


@pytest.mark.parametrize("step", FAILOVER_STEPS)
def test_kill9_at_every_failover_step_then_resume(w: World, step: str) -> None:
    make_disk(w.image, "final")
    job = failover.start_job(w.vault, "failover", "web", shutdown_source=True)
    assert _child(w, job, step).wait(120) == 137
    cut = get_job(w.vault, job.id)
    assert effective_state(cut, live_jobs(w.vault)) == "interrupted"
    assert next(s for s in cut.steps if s.name == step).state == "running"  # cut before its record

    done = run_job(w.vault, job.id)
    assert done.state == "succeeded", done.error
    assert "marker=final" in _steps(done)["verify_boot"]
    assert _staged_equals(w, "web", w.image)
    placement = w.target().find("web")
    assert placement is not None and placement.details == {"state": "running", "starts": 1}
    assert _state(w) == "failed_over"


def test_a_target_fault_fails_the_step_and_the_job_resumes(w: World) -> None:
    w.target().inject("start")  # type: ignore[attr-defined]
    job = _run(w, "failover")
    assert job.state == "failed" and "injected fault: start failed" in job.error
    assert _state(w) == "failover_in_progress"
    with pytest.raises(InvalidState, match="point of no return"):
        cancel_job(w.vault, job.id)
    done = run_job(w.vault, job.id)  # the fault was injected once
    assert done.state == "succeeded", done.error
    assert _state(w) == "failed_over" and _steps(done)["start"].endswith("on the production network")


def test_an_operation_on_a_machine_with_a_running_failover_is_refused(w: World) -> None:
    job = failover.start_job(w.vault, "failover", "web")
    child = _child(w, job, "stage_disks", "hang")
    try:
        deadline = time.monotonic() + 60
        while not (w.vault.root / "hanging").exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for kind in ("failover", "test-failover"):
            with pytest.raises(InvalidState, match=f"web has a failover job running \\({job.id}\\)"):
                failover.start_job(w.vault, kind, "web")
        with pytest.raises(InvalidState, match="failover is in progress"):
            protection.replicate(w.vault, "web")
        with pytest.raises(InvalidState, match="is running"):
            run_job(w.vault, job.id)
    finally:
        child.kill()
        child.wait()
    assert run_job(w.vault, job.id).state == "succeeded"


def test_cli_failover_killed_by_the_target_then_job_resume(tmp_path: Path) -> None:
    """The memory target keeps its state in its folder, so separate rehost processes share it:
    a failover process dies inside the target's create (as a kill -9), ``rehost job resume``
    finishes it."""
    vault, double = tmp_path / "vault", tmp_path / "double"
    rehost(vault, "init")
    rehost(vault, "target", "add", "memory", "double", "--path", str(double))
    rehost(vault, "source", "add-image", "web", str(make_disk(tmp_path / "web.img", "cli")))
    rehost(vault, "replicate", "web")
    r = rehost(vault, "failover", "web", "--test", "--json")
    assert "REHOST-BOOT-OK marker=cli" in r.json()["steps"][-1]["detail"]
    rehost(vault, "failover", "web", "--cleanup")

    MemoryTarget(MemorySettings(double)).inject("create", "exit", when="after")
    assert rehost(vault, "failover", "web", check=False).code == 137
    job = rehost(vault, "jobs", "--json").json()[0]
    assert job["kind"] == "failover" and job["state"] == "interrupted"
    rehost(vault, "job", "resume", job["id"])
    job = rehost(vault, "job", job["id"], "--json").json()
    assert job["state"] == "succeeded" and "marker=cli" in job["steps"][-1]["detail"]
    assert rehost(vault, "machines", "--json").json()[0]["runs_at"] == str(double / "web")
