"""Plans through the API: read, start a test failover of a plan or its cleanup, follow the
plan job, and confirm the manual action it waits for (operators only; 409 when nothing
waits)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update

from rehost.jobs.models import JobRow
from rehost.vault import plan_jobs, plans
from rehost.vault.vault import Vault
from tests.api.plan_world import make_plan_vault
from tests.api.portal import Portal, portal_for
from tests.cli_helpers import rehost


def test_read_and_confirm(portal: Portal) -> None:
    rehost(portal.vault, "plan", "create", "shop")
    rehost(portal.vault, "plan", "add", "shop", "web", "--group", "1")
    rehost(portal.vault, "plan", "action", "shop", "--group", "1", "--manual", "open the firewall")
    shop = {"name": "shop", "groups": [{"group": 1, "machines": ["web"], "actions": [
        {"group": 1, "kind": "manual", "text": "open the firewall"}]}]}
    assert portal.get("/plans/shop").json() == shop
    assert portal.get("/plans").json() == [shop]
    assert portal.get("/plans/nope").status_code == 404

    r = portal.post("/plans/shop/confirm")
    assert r.status_code == 409 and "no job waiting for a confirmation" in r.json()["error"]
    # a plan job as it is while its step waits (the waiting itself: tests/vault/test_plan_jobs.py)
    vault = Vault.open(portal.vault)
    try:
        job = plan_jobs.start(vault, plan_jobs.TEST_FAILOVER, "shop")
        with vault.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job.id).values(
                state="running", outputs={"waiting": {"key": "1:0", "text": "open the firewall"}}))
        assert portal.post("/plans/shop/confirm", role="reader").status_code == 403
        r = portal.post("/plans/shop/confirm")
        assert r.status_code == 200 and r.json() == {"plan": "shop", "confirmed": "open the firewall"}
        with vault.session() as s:
            outputs = s.get(JobRow, job.id).outputs  # type: ignore[union-attr]
        assert outputs == {"confirmed": ["1:0"]}
        assert portal.post("/plans/shop/confirm").status_code == 409
    finally:
        vault.close()


def _wait(portal: Portal, path: str, until: Callable[[dict[str, Any]], bool],
          timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = portal.get(path).json()
        if until(body):
            return body
        assert time.monotonic() < deadline, f"{path} still {body} after {timeout}s"
        time.sleep(0.2)


def test_test_failover_of_a_plan_followed_confirmed_and_cleaned_up(tmp_path: Path) -> None:
    """On the memory target (a test double): start, follow a step per group and a child job per
    machine, confirm the manual action through the API, see the job succeed, then clean up."""
    tokens = make_plan_vault(tmp_path)
    with portal_for(tmp_path, tokens) as portal:
        vault = portal.open_vault()
        try:
            plans.create(vault, "shop")
            plans.add_machine(vault, "shop", "db", 1)
            plans.add_action(vault, "shop", 1, "manual", text="open the firewall")
            plans.add_machine(vault, "shop", "web", 2)
            plans.create(vault, "empty")
        finally:
            vault.close()

        r = portal.get("/plans/shop/job")
        assert r.status_code == 404 and "plan 'shop' has no plan job yet" in r.json()["error"]
        assert "no plan named 'nope'" in portal.get("/plans/nope/job").json()["error"]
        assert portal.post("/plans/nope/failover", {"test": True}).status_code == 404
        for body in ({}, {"test": True, "cleanup": True}, {"test": True, "shutdown": True}):
            assert portal.post("/plans/shop/failover", body).status_code == 422, body
        assert portal.post("/plans/shop/failover", {"test": True}, role="reader").status_code == 403
        r = portal.post("/plans/empty/failover", {"test": True})
        assert r.status_code == 409 and "has no machines" in r.json()["error"]

        r = portal.post("/plans/shop/failover", {"test": True})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["Location"] == f"/api/v1/jobs/{job_id}"
        assert r.json()["kind"] == plan_jobs.TEST_FAILOVER
        again = portal.post("/plans/shop/failover", {"cleanup": True})
        assert again.status_code == 409 and f"({job_id}); wait for it" in again.json()["error"]

        job = _wait(portal, "/plans/shop/job", lambda j: j["waiting"] is not None)
        assert job["id"] == job_id and job["plan"] == "shop" and job["state"] == "running"
        steps = [(s["name"], s["state"]) for s in job["steps"]]
        assert steps == [("points", "succeeded"), ("group_1", "running"), ("group_2", "pending")]
        assert job["waiting"] == {"key": "1:0", "text": "open the firewall"}
        assert list(job["children"]) == ["db"]  # group 2 waits for the confirmation
        db = job["children"]["db"]
        assert db["kind"] == "test-failover" and db["state"] == "succeeded"
        assert [(c["name"], c["ok"]) for c in db["verdict"]["checks"]] == [("boot", True)]
        assert job["verdict"]["ok"] and [c["machine"] for c in job["verdict"]["checks"]] == ["db"]
        assert job["confirmed"] == []

        assert portal.post("/plans/shop/confirm").json()["confirmed"] == "open the firewall"
        assert portal.wait_job(job_id)["state"] == "succeeded"
        job = portal.get("/plans/shop/job").json()
        assert job["waiting"] is None and job["confirmed"] == ["1:0"]
        assert {m: c["state"] for m, c in job["children"].items()} == {"db": "succeeded", "web": "succeeded"}
        assert "confirmed: open the firewall" in job["steps"][1]["detail"]

        # a verdict (written by the checks once they have run) goes out as it is kept
        check = {"machine": "web", "name": "http:80", "kind": "http", "ok": False, "detail": "got 502"}
        vault = portal.open_vault()
        try:
            with vault.session() as s, s.begin():
                s.execute(update(JobRow).where(JobRow.id == job_id).values(
                    outputs={**job_outputs(vault, job_id), "verdict": {"ok": False, "checks": [check]}}))
                s.execute(update(JobRow).where(JobRow.id == job["children"]["web"]["job"]).values(
                    outputs={"verdict": {"ok": False, "checks": [check]}}))
        finally:
            vault.close()
        job = portal.get("/plans/shop/job").json()
        assert job["verdict"] == {"ok": False, "checks": [check]}
        assert job["children"]["web"]["verdict"] == {"ok": False, "checks": [check]}

        r = portal.post("/plans/shop/failover", {"cleanup": True})
        assert r.status_code == 202, r.text
        assert portal.wait_job(r.json()["id"])["state"] == "succeeded"
        job = portal.get("/plans/shop/job").json()
        assert job["id"] == r.json()["id"] and job["kind"] == plan_jobs.TEST_CLEANUP
        assert [s["name"] for s in job["steps"]] == ["group_2", "group_1"]
        assert {c["kind"] for c in job["children"].values()} == {"test-cleanup"}
        assert {m["name"]: m["state"] for m in portal.get("/machines").json()} == {
            "db": "protected", "web": "protected"}


def test_a_failed_plan_job_names_the_machine_and_its_step(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, ("db", "bad", "web"), unbootable=("bad",))
    with portal_for(tmp_path, tokens) as portal:
        vault = portal.open_vault()
        try:
            plans.create(vault, "shop")
            plans.add_machine(vault, "shop", "db", 1)
            plans.add_machine(vault, "shop", "bad", 1)
            plans.add_machine(vault, "shop", "web", 2)
        finally:
            vault.close()
        r = portal.post("/plans/shop/failover", {"test": True})
        assert portal.wait_job(r.json()["id"])["state"] == "failed"
        job = portal.get("/plans/shop/job").json()
        assert job["state"] == "failed" and "machine bad: test-failover job" in job["error"]
        assert [s["state"] for s in job["steps"]] == ["succeeded", "failed", "pending"]
        assert job["children"]["db"]["state"] == "succeeded" and job["children"]["db"]["step"] == ""
        bad = job["children"]["bad"]
        assert bad["state"] == "failed" and bad["step"] and f"at step {bad['step']!r}" in job["error"]
        assert "web" not in job["children"]


def job_outputs(vault: Vault, job_id: str) -> dict[str, Any]:
    with vault.session() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        return dict(row.outputs)
