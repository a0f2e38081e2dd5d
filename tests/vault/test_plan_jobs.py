"""Plan jobs on the memory target (fast, no QEMU): groups in order, scripts with the plan's
context and their output in the job, a failing group that stops the plan and names the
machine, cleanup, and a kill -9 mid-plan that `rehost job resume` finishes without failing
a finished machine over again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.jobs.runner import DONE_STATES, get_job, list_jobs, resumable_jobs, run_job
from rehost.vault import inventory, plan_jobs, plans, protection
from rehost.vault.scheduler import Scheduler
from tests.cli_helpers import REHOST, REPO, rehost
from tests.targets.helpers import World, make_disk, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, "memory", markers=("first",)) as w:
        for name, bootable in (("db", True), ("bad", False)):
            image = make_disk(tmp_path / f"{name}.img", name, bootable=bootable)
            inventory.add_image_source(w.vault, name, [image])
            protection.replicate(w.vault, name)
        yield w


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_groups_in_order_with_the_scripts_output_then_cleanup(w: World, tmp_path: Path) -> None:
    seen = tmp_path / "context.json"
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    body = f'cp "$REHOST_PLAN_CONTEXT" {seen}; echo "configured $REHOST_PLAN/$REHOST_GROUP"\n'
    plans.add_action(w.vault, "shop", 1, "post", timeout_s=10, script=_script(tmp_path / "post.sh", body))
    plans.add_machine(w.vault, "shop", "web", 2)
    undo = _script(tmp_path / "undo.sh", 'echo "undone $REHOST_GROUP"\n')
    plans.add_action(w.vault, "shop", 1, "cleanup", script=undo)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop").id)
    assert job.state == "succeeded", job.error
    assert [s.name for s in job.steps] == ["points", "group_1", "group_2"]
    assert "undone" not in job.steps[1].detail
    assert "configured shop/1" in job.steps[1].detail
    children = job.outputs["children"]
    db, web = get_job(w.vault, children["db"]), get_job(w.vault, children["web"])
    assert db.state == web.state == "succeeded"
    assert db.ended_at is not None and web.started_at is not None and db.ended_at <= web.started_at
    context = json.loads(seen.read_text())
    assert context["plan"] == "shop" and [m["name"] for m in context["machines"]] == ["db"]
    assert context["machines"][0]["point"] == db.outputs["point"] and context["machines"][0]["target"] == "t"
    assert inventory.get_machine(w.vault, "db").state == "test_failover"

    cleanup = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_CLEANUP, "shop").id)
    assert cleanup.state == "succeeded", cleanup.error
    assert [s.name for s in cleanup.steps] == ["group_2", "group_1"]
    assert "undone 1" in cleanup.steps[1].detail
    assert {inventory.get_machine(w.vault, m).state for m in ("db", "web")} == {"protected"}


def test_a_failing_group_stops_the_plan_and_names_the_machine(w: World, tmp_path: Path) -> None:
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_machine(w.vault, "shop", "bad", 1)
    plans.add_machine(w.vault, "shop", "web", 2)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop").id)
    assert job.state == "failed"
    assert "machine bad: test-failover job" in job.error and "failed at step" in job.error
    assert "machine db" not in job.error  # its sibling, started with it, succeeded
    assert get_job(w.vault, job.outputs["children"]["db"]).state == "succeeded"
    assert job.steps[1].state == "failed" and job.steps[2].state not in DONE_STATES
    assert "web" not in job.outputs["children"]


def test_a_failing_script_fails_its_group(w: World, tmp_path: Path) -> None:
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_action(w.vault, "shop", 1, "pre", timeout_s=1, script=_script(tmp_path / "s.sh", "sleep 30\n"))
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop").id)
    assert job.state == "failed" and "did not finish in 1s and was killed" in job.error
    assert "children" not in job.outputs  # a pre-action runs before the group's machines


def test_kill9_mid_plan_then_resume_does_not_redo_finished_machines(w: World, tmp_path: Path) -> None:
    marker = tmp_path / "hanging"
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_machine(w.vault, "shop", "web", 2)
    plans.add_action(w.vault, "shop", 2, "pre", timeout_s=600, script=_script(
        tmp_path / "hang.sh", f"[ -e {marker} ] && exit 0; echo $$ > {marker}; sleep 600\n"))
    vault_path = str(w.vault.root)
    w.vault.close()
    env = {**os.environ, "REHOST_VAULT": ""}
    proc = subprocess.Popen([*REHOST, "--vault", vault_path, "plan", "failover", "shop", "--test"], cwd=REPO,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the script lives in its own session

    from rehost.vault.vault import Vault

    vault = Vault.open(Path(vault_path))
    try:
        job = next(j for j in list_jobs(vault) if j.kind == plan_jobs.TEST_FAILOVER)
        db_job = get_job(vault, job.outputs["children"]["db"])
        assert db_job.state == "succeeded" and "web" not in job.outputs["children"]
        rehost(Path(vault_path), "job", "resume", job.id)
        job = get_job(vault, job.id)
        assert job.state == "succeeded", job.error
        again = get_job(vault, job.outputs["children"]["db"])
        assert again.id == db_job.id and again.started_at == db_job.started_at  # db did not run again
        assert get_job(vault, job.outputs["children"]["web"]).state == "succeeded"
        assert len([j for j in list_jobs(vault) if j.kind == "test-failover"]) == 2
        listed = rehost(Path(vault_path), "jobs").out  # a plan job has no machine: listed by plan
        assert plan_jobs.TEST_FAILOVER in listed and "shop" in listed
        shown = rehost(Path(vault_path), "job", job.id).out
        assert "Group 1: db" in shown and "Group 2: web" in shown
    finally:
        vault.close()


def test_serve_continues_a_plan_killed_inside_a_child_through_the_plan(w: World, tmp_path: Path) -> None:
    """kill -9 while web's child job is mid-step: both jobs are left running. The server's
    scheduler picks up the plan job only (the child is the plan's to continue: resumed on its
    own too, it would race the plan for the machine), and the plan ends well."""
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_machine(w.vault, "shop", "web", 2)
    once = tmp_path / "injected"  # the step runs again on resume, its pre-action with it
    inject = (f"[ -e {once} ] && exit 0; touch {once}\n"
              f"{sys.executable} -c \"from rehost.targets.memory import MemorySettings, MemoryTarget; "
              f"MemoryTarget(MemorySettings(path='{w.target_path}')).inject('start', 'exit')\"\n")
    plans.add_action(w.vault, "shop", 2, "pre", timeout_s=60, script=_script(tmp_path / "kill.sh", inject))
    vault_path = Path(w.vault.root)
    r = rehost(vault_path, "plan", "failover", "shop", "--test", check=False)
    assert r.code == 137  # ended by the target, as a kill -9 would end it
    plan_job = next(j for j in list_jobs(w.vault) if j.kind == plan_jobs.TEST_FAILOVER)
    web = get_job(w.vault, plan_job.outputs["children"]["web"])
    assert plan_job.state == web.state == "running"  # as the killed process left them
    picked = [j.id for j in resumable_jobs(w.vault, queued_for=0)]
    assert plan_job.id in picked and web.id not in picked
    said: list[str] = []
    scheduler = Scheduler(w.vault, log=said.append, resume_jobs=True)  # what rehost serve runs
    try:
        scheduler.tick()
    finally:
        scheduler.close()  # waits for the resumed job
    plan_job = get_job(w.vault, plan_job.id)
    assert plan_job.state == "succeeded", (plan_job.error, said)
    assert [m for m in said if "picking up" in m] == [f"shop: picking up {plan_job.kind} job {plan_job.id}"]
    assert get_job(w.vault, web.id).state == "succeeded"
    assert len([j for j in list_jobs(w.vault) if j.kind == "test-failover"]) == 2  # web's job resumed


def test_a_manual_action_waits_for_the_operator(w: World, tmp_path: Path) -> None:
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_action(w.vault, "shop", 1, "manual", text="open the firewall")
    plans.add_machine(w.vault, "shop", "web", 2)
    vault_path = Path(w.vault.root)
    early = rehost(vault_path, "plan", "confirm", "shop", check=False)
    assert early.code != 0 and "no job waiting for a confirmation" in early.err
    confirmed: list[str] = []

    def operator() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = rehost(vault_path, "plan", "confirm", "shop", check=False)
            if r.code == 0:
                confirmed.append(r.out)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=operator)
    thread.start()
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop").id)
    thread.join()
    assert job.state == "succeeded", job.error
    assert confirmed == ["confirmed: open the firewall\n"]
    assert "confirmed: open the firewall" in job.steps[1].detail
    web = get_job(w.vault, job.outputs["children"]["web"])
    assert web.started_at is not None and job.steps[1].ended_at is not None
    assert "waiting" not in job.outputs and job.outputs["confirmed"] == ["1:0"]


def test_readiness_is_forced_or_fixed_up_for_every_machine_of_the_plan(
        w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that is not ready stops the plan's test failover at its readiness step; with
    --force-readiness and a reason (or fix-ups) each machine's job is handed them."""
    from rehost.guest.fixups import FixUpError
    from rehost.vault import fixup
    from tests.inspections import UNREADY_FOR_AZURE, judge_memory_as_azure, seed

    judge_memory_as_azure(monkeypatch)
    seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "web", 1)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop").id)
    assert job.state == "failed" and "web is not ready for target t" in job.error
    child = get_job(w.vault, job.outputs["children"]["web"])
    assert child.steps[0].name == "readiness" and child.steps[0].state == "failed"

    with pytest.raises(UsageError, match="--force-readiness needs --reason"):
        plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop", readiness_force_reason=" ")
    with pytest.raises(UsageError, match="unknown fix-up 'dhpc'"):
        plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop", fixups=["dhpc"])
    with pytest.raises(UsageError, match="go with a plan's \\(test\\) failover"):
        plan_jobs.start(w.vault, plan_jobs.TEST_CLEANUP, "shop", fixups=["dhcp"])

    def no_appliance(*args: object) -> None:  # the fix-ups themselves: tests/vault/test_failover_fixups.py
        raise FixUpError("the stand-in was called")

    monkeypatch.setattr(fixup, "apply_fixups", no_appliance)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop",
                                           readiness_force_reason="drivers are built in", fixups=["dhcp"]).id)
    child = get_job(w.vault, job.outputs["children"]["web"])
    assert child.params["readiness_forced"] == {"reason": "drivers are built in"}
    assert child.params["fixups"] == ["dhcp"]
    assert "FORCED past the failed requirement(s)" in child.steps[0].detail
    assert job.state == child.state == "failed" and "the stand-in was called" in child.error
    assert not (w.vault.root / "run" / "web-test").exists()  # its NBD servers were stopped
    assert run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.TEST_CLEANUP, "shop").id).state == "succeeded"
