"""Verdicts on the memory target (a declared test double; the probes are real sockets): a
machine's probes run after its boot, a failing one fails the job and names itself, complete
wants a passing verdict or a recorded reason, and a plan stops at the group whose machine
failed a port check."""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rehost.errors import InvalidState, UsageError
from rehost.guest.probes import Check
from rehost.jobs.runner import get_job, run_job
from rehost.targets.memory import MemoryTarget
from rehost.vault import failover, inventory, plan_jobs, plans, protection, verdicts
from rehost.vault.inventory import get_machine
from tests.cli_helpers import rehost
from tests.loopback import http_service, tcp_service
from tests.targets.helpers import World, make_disk, world


class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"REHOST-WEB marker=shop"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def services() -> Iterator[dict[str, int]]:
    """An HTTP server that answers, and a port that accepts and closes without a byte (what
    QEMU's forwarding does when nothing listens in the guest)."""
    with http_service(Web) as http_port, tcp_service() as mute:
        yield {"http": http_port, "mute": mute}


@pytest.fixture
def w(tmp_path: Path, services: dict[str, int]) -> Iterator[World]:
    with world(tmp_path, "memory", markers=("first",)) as w:
        for name in ("db", "app"):
            inventory.add_image_source(w.vault, name, [make_disk(tmp_path / f"{name}.img", name)])
            protection.replicate(w.vault, name)
        target = w.target()
        assert isinstance(target, MemoryTarget)
        for name in ("web", "db", "app"):
            target.expose(name, 80, "127.0.0.1", services["http"])
            target.expose(name, 5432, "127.0.0.1", services["mute"])
        yield w


def _add(w: World, machine: str, *checks: Check) -> None:
    for c in checks:
        verdicts.add_check(w.vault, machine, c)


HTTP = Check("site", "http", port=80, expect="REHOST-WEB", timeout_s=5)
PG = Check("postgres", "tcp", port=5432, timeout_s=2)


def test_test_failover_keeps_every_verdict_and_a_failing_probe_names_itself(w: World) -> None:
    _add(w, "web", HTTP, PG)
    job = run_job(w.vault, failover.start_job(w.vault, "test-failover", "web").id)
    assert job.state == "failed" and job.steps[-1].name == "checks"
    v = job.outputs["verdict"]
    seen = [(c["name"], c["ok"]) for c in v["checks"]]
    assert seen == [("boot", True), ("site", True), ("postgres", False)]
    assert v["ok"] is False and "REHOST-BOOT-OK" in v["checks"][0]["detail"]
    assert "web/postgres" in job.error and "no byte came back" in job.error
    verdicts.remove_check(w.vault, "web", "postgres")
    job = run_job(w.vault, job.id)  # resume: the checks run again, now passing
    assert job.state == "succeeded" and job.outputs["verdict"]["ok"]
    assert "site" in job.steps[-1].detail


def test_a_probe_the_target_cannot_reach_fails_saying_so(w: World) -> None:
    _add(w, "web", Check("ssh", "tcp", port=22, timeout_s=1))
    job = run_job(w.vault, failover.start_job(w.vault, "test-failover", "web").id)
    assert job.state == "failed" and "gives no way to reach port 22" in job.error


def test_complete_wants_a_passing_verdict_or_a_recorded_reason(w: World) -> None:
    _add(w, "web", PG)
    job = run_job(w.vault, failover.start_job(w.vault, "failover", "web").id)
    assert job.state == "failed" and job.steps[-1].name == "checks"
    assert get_machine(w.vault, "web").state == "failed_over"  # it runs; it did not pass
    with pytest.raises(InvalidState, match=rf"verdict of its last failover \(job {job.id}\) failed: "
                                           r"web/postgres: .*no byte came back"):
        failover.start_job(w.vault, "complete", "web")
    r = rehost(w.vault.root, "complete", "web", check=False)
    assert r.code != 0 and "--force --reason" in r.err
    r = rehost(w.vault.root, "complete", "web", "--force", check=False)
    assert r.code == 2 and "--force needs --reason" in r.err
    r = rehost(w.vault.root, "complete", "web", "--reason", "x", check=False)
    assert r.code == 2 and "--reason goes with --force" in r.err
    r = rehost(w.vault.root, "complete", "web", "--force", "--reason", "db port closed on purpose", "--json")
    done = get_job(w.vault, r.json()["id"])
    assert done.state == "succeeded"
    assert done.params["forced"]["reason"] == "db port closed on purpose"
    assert "postgres" in done.params["forced"]["why"] and "db port closed on purpose" in done.steps[-1].detail
    assert "db port closed on purpose" in get_machine(w.vault, "web").state_reason


def test_complete_after_a_passing_verdict(w: World) -> None:
    _add(w, "web", HTTP)
    job = run_job(w.vault, failover.start_job(w.vault, "failover", "web").id)
    assert job.state == "succeeded", job.error
    done = run_job(w.vault, failover.start_job(w.vault, "complete", "web").id)
    assert done.state == "succeeded" and done.params == {"verdict_job": job.id, "verdict": "passed"}


def test_probe_cli(w: World, tmp_path: Path) -> None:
    rehost(w.vault.root, "probe", "add", "web", "site", "--http", "80", "--path", "/", "--expect", "REHOST")
    r = rehost(w.vault.root, "probe", "add", "web", "x", "--http", "80", "--tcp", "22", check=False)
    assert r.code == 2 and "exactly one of" in r.err
    r = rehost(w.vault.root, "probe", "add", "web", "site", "--tcp", "22", check=False)
    assert r.code != 0 and "already has a check named 'site'" in r.err
    r = rehost(w.vault.root, "probe", "add", "web", "s", "--script", str(tmp_path / "none.sh"), check=False)
    assert r.code == 2 and "no such file" in r.err
    assert "HTTP GET :80/" in rehost(w.vault.root, "probe", "list", "web").out
    rehost(w.vault.root, "probe", "remove", "web", "site")
    assert "no probes" in rehost(w.vault.root, "probe", "list", "web").out


def test_a_script_probe_gets_the_machine_and_its_endpoints(w: World, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\n"
                      'grep -q \'"80"\' "$REHOST_CHECK_CONTEXT" && echo "checked $REHOST_MACHINE"\n')
    script.chmod(0o755)
    _add(w, "web", HTTP, Check("script", "script", script=str(script), timeout_s=10))
    job = run_job(w.vault, failover.start_job(w.vault, "test-failover", "web").id)
    assert job.state == "succeeded", job.error
    assert job.outputs["verdict"]["checks"][-1]["detail"] == "exit 0: checked web"


def _shop(w: World) -> None:
    plans.create(w.vault, "shop")
    plans.add_machine(w.vault, "shop", "db", 1)
    plans.add_machine(w.vault, "shop", "web", 2)
    plans.add_machine(w.vault, "shop", "app", 3)
    _add(w, "db", HTTP)
    _add(w, "web", HTTP, PG)


def test_a_plan_stops_at_the_group_that_failed_a_port_check(w: World) -> None:
    _shop(w)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.FAILOVER, "shop").id)
    assert job.state == "failed"
    assert [(s.name, s.state) for s in job.steps] == [("group_1", "succeeded"), ("group_2", "failed"),
                                                      ("group_3", "pending")]
    assert "machine web: failover job" in job.error and "web/postgres" in job.error
    assert "no byte came back" in job.error and "app" not in job.outputs["children"]
    v = job.outputs["verdict"]
    assert not v["ok"] and {(c["machine"], c["name"], c["ok"]) for c in v["checks"]} == {
        ("db", "boot", True), ("db", "site", True), ("web", "boot", True), ("web", "site", True),
        ("web", "postgres", False)}
    with pytest.raises(InvalidState, match=r"plan shop: web: the verdict of its last failover .* "
                                           r"failed: web/postgres"):
        plan_jobs.start(w.vault, plan_jobs.COMPLETE, "shop")
    with pytest.raises(InvalidState, match="app: it has no failover job"):
        plan_jobs.start(w.vault, plan_jobs.COMPLETE, "shop")

    r = rehost(w.vault.root, "plan", "complete", "shop", check=False)
    assert r.code != 0 and "cannot complete plan shop" in r.err
    # resume after the operator dropped the failing probe: group 2 passes, group 3 runs
    verdicts.remove_check(w.vault, "web", "postgres")
    job = run_job(w.vault, job.id)
    assert job.state == "succeeded", job.error
    assert get_job(w.vault, job.outputs["children"]["db"]).params.get("peers") == []
    web_peers = get_job(w.vault, job.outputs["children"]["web"]).params["peers"]
    assert [(p["name"], p["port"]) for p in web_peers] == [("db", 80)]
    r = rehost(w.vault.root, "plan", "complete", "shop", "--force", "--reason", "signed off by the app team")
    assert "Complete group 3" in r.out
    assert {get_machine(w.vault, m).state for m in ("db", "web", "app")} == {"migration_completed"}


def test_plan_complete_is_forced_and_recorded(w: World) -> None:
    _shop(w)
    job = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.FAILOVER, "shop").id)
    assert job.state == "failed"
    for m in ("web", "app"):  # app never failed over: it cannot be completed, forced or not
        assert get_machine(w.vault, m).state in ("failed_over", "protected")
    plans.remove_machine(w.vault, "shop", "app")
    with pytest.raises(UsageError, match="--force needs --reason"):
        plan_jobs.start(w.vault, plan_jobs.COMPLETE, "shop", force_reason=" ")
    done = run_job(w.vault, plan_jobs.start(w.vault, plan_jobs.COMPLETE, "shop", force_reason="accepted").id)
    assert done.state == "succeeded", done.error
    assert done.params["verdicts"]["db"]["verdict"] == "passed"
    assert done.params["verdicts"]["web"]["forced"]["reason"] == "accepted"
    web = get_job(w.vault, done.outputs["children"]["web"])
    assert web.params["forced"]["reason"] == "accepted"


def test_consistent_points_and_one_job_per_plan(w: World) -> None:
    _shop(w)
    instant = datetime.now(UTC)
    before = {m: protection.find_point(w.vault, m, "latest").id for m in ("db", "web", "app")}
    protection.replicate(w.vault, "db")  # newer than the instant: not taken
    job = plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop", at=instant.isoformat())
    chosen = {m: p["id"] for m, p in job.params["consistency"]["points"].items()}
    assert chosen == before
    with pytest.raises(InvalidState, match=f"plan 'shop' has a plan-test-failover job queued \\({job.id}\\)"):
        plan_jobs.start(w.vault, plan_jobs.TEST_CLEANUP, "shop")
    verdicts.remove_check(w.vault, "web", "postgres")
    job = run_job(w.vault, job.id)
    assert job.state == "succeeded", job.error
    assert get_job(w.vault, job.outputs["children"]["db"]).outputs["point"] == before["db"]
    assert "spread" in job.steps[0].detail and before["db"][:12] in job.steps[0].detail
    with pytest.raises(UsageError, match="not a time"):
        plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop", at="yesterday")
    with pytest.raises(Exception, match="no recovery point at or before"):
        plan_jobs.start(w.vault, plan_jobs.TEST_FAILOVER, "shop", at="2000-01-01T00:00:00Z")
