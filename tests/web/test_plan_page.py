"""The plan page in headless Chromium, on the memory target (a declared test double): the
plans list, a plan's groups with their machines and actions, a test failover started from the
page that waits on a manual action, confirmed from the page, followed live to success, with
each machine's child job and checks; then its cleanup. Names and outputs are shown as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import update

from rehost.jobs.models import JobRow
from rehost.vault import plans
from rehost.vault.vault import Vault
from tests.api.plan_world import make_plan_vault
from tests.api.portal import live_server, portal_for
from tests.web.conftest import Shots
from tests.web.test_dashboard import Site, sign_in

MARKUP = '<b id="injected">web</b>'


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _wait_state(page: Any, state: str, timeout_s: float = 60) -> None:
    page.wait_for_function(
        "(s) => { const b = document.querySelector('#plan-job-state');"
        " return b !== null && b.textContent.trim() === s; }", arg=state, timeout=timeout_s * 1000)


def _set_verdicts(vault_path: Path, plan_job: str, verdicts: dict[str, dict[str, Any]]) -> None:
    """What the checks keep with the jobs once they have run (verdicts per child, then the plan's)."""
    vault = Vault.open(vault_path)
    try:
        with vault.session() as s, s.begin():
            row = s.get(JobRow, plan_job)
            assert row is not None
            children = row.outputs["children"]
            for machine, verdict in verdicts.items():
                child = s.get(JobRow, children[machine])
                assert child is not None
                s.execute(update(JobRow).where(JobRow.id == child.id)
                          .values(outputs={**child.outputs, "verdict": verdict}))
            checks = [c for v in verdicts.values() for c in v["checks"]]
            s.execute(update(JobRow).where(JobRow.id == plan_job).values(outputs={
                **row.outputs, "verdict": {"ok": all(c["ok"] for c in checks), "checks": checks}}))
    finally:
        vault.close()


def _check(machine: str, name: str, kind: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"machine": machine, "name": name, "kind": kind, "ok": ok, "detail": detail}


def test_plan_page_follows_a_test_failover_and_its_manual_action(browser: Any, tmp_path: Path,
                                                                  shots: Shots) -> None:
    tokens = make_plan_vault(tmp_path)
    vault = Vault.open(tmp_path / "vault")
    try:
        plans.create(vault, "shop")
        plans.add_machine(vault, "shop", "db", 1)
        post = _script(tmp_path / "point-web-at-db.sh", "echo 'db is at 10.0.0.5 <img id=evil src=x>'\n")
        plans.add_action(vault, "shop", 1, "post", script=post, timeout_s=30)
        plans.add_action(vault, "shop", 1, "manual", text=f"switch DNS to {MARKUP}")
        plans.add_machine(vault, "shop", "web", 2)
        undo = _script(tmp_path / "undo.sh", "echo undone\n")
        plans.add_action(vault, "shop", 1, "cleanup", script=undo)
    finally:
        vault.close()

    with portal_for(tmp_path, tokens) as portal, live_server(portal.app) as url:
        site = Site(url, tokens)
        page = sign_in(browser, site, "operator")
        page.click("text=Recovery plans")
        page.wait_for_url(f"{url}/ui/plans")
        row = page.locator("tr[data-plan=shop]")
        assert "db, web" in row.inner_text() and "never run" in row.inner_text()
        page.click("tr[data-plan=shop] >> text=shop")
        page.wait_for_url(f"{url}/ui/plans/shop")

        groups = page.locator("#groups > li.group")
        assert groups.count() == 2
        first, second = page.locator("[data-group='1']"), page.locator("[data-group='2']")
        assert "db" in first.locator("tr[data-machine=db]").inner_text()
        assert first.locator(".action").all_inner_texts() == [
            f"post {post} (timeout 30s)", f"manual switch DNS to {MARKUP}", f"cleanup {undo} (timeout 60s)"]
        assert "web" in second.inner_text() and "not started" in second.inner_text()
        assert page.locator("#plan-job").inner_text() == "No plan job yet."
        shots.take(page, "plan-before")

        page.click("#plan-test-failover")
        page.wait_for_selector("#waiting-text", timeout=60_000)
        assert page.inner_text("#waiting-text") == f"switch DNS to {MARKUP}"
        assert page.locator("#injected").count() == 0 and page.locator("#evil").count() == 0
        assert page.inner_text("#plan-job-state") == "running"
        assert page.inner_text("[data-group='1'] .group-state") == "running"
        assert page.inner_text("[data-group='2'] .group-state") == "pending"
        assert page.inner_text("tr[data-machine=db] .child-state") == "succeeded"
        assert page.inner_text("tr[data-machine=web] .child-state") == "not started"
        assert "waiting for an operator to confirm" in page.inner_text("[data-group='1'] pre.detail")
        assert page.locator("#plan-test-failover").is_disabled()
        shots.take(page, "plan-running-waits-for-confirmation")

        page.click("#plan-confirm")
        _wait_state(page, "succeeded")
        assert page.locator("#waiting").count() == 0
        assert page.inner_text("[data-group='1'] .group-state") == "succeeded"
        assert page.inner_text("[data-group='2'] .group-state") == "succeeded"
        assert page.inner_text("tr[data-machine=web] .child-state") == "succeeded"
        detail = page.inner_text("[data-group='1'] pre.detail")
        assert "confirmed: switch DNS to" in detail and "db is at 10.0.0.5 <img id=evil src=x>" in detail
        assert page.locator("#evil").count() == 0
        assert not page.locator("#plan-test-failover").is_disabled()

        # the checks' verdicts, as the failover keeps them with the jobs
        plan_job = portal.get("/plans/shop/job").json()["id"]
        db_checks = [_check("db", "boot", "boot", True, "guest agent answered in 4.2s"),
                     _check("db", "tcp:5432", "tcp", True, "bytes came back")]
        web_checks = [_check("web", "boot", "boot", True, "REHOST-BOOT-OK seen"),
                      _check("web", "http:80/", "http", True, "200, body has 'orders: 3'")]
        _set_verdicts(tmp_path / "vault", plan_job, {"db": {"ok": True, "checks": db_checks},
                                                     "web": {"ok": True, "checks": web_checks}})
        page.reload()
        assert page.inner_text("#plan-verdict .verdict") == "passed"
        assert page.locator("#plan-verdict .check.ok").count() == 4
        assert page.locator("tr[data-machine=web] .check").all_inner_texts() == [
            "boot boot on web REHOST-BOOT-OK seen", "http:80/ http on web 200, body has 'orders: 3'"]
        shots.take(page, "plan-succeeded-with-verdicts")

        _set_verdicts(tmp_path / "vault", plan_job, {
            "web": {"ok": False, "checks": [_check("web", "http:80/", "http", False, f"got 502: {MARKUP}")]}})
        page.reload()
        assert page.inner_text("#plan-verdict .verdict") == "failed"
        failed = page.locator("tr[data-machine=web] .check.fail")
        assert failed.count() == 1 and f"got 502: {MARKUP}" in failed.inner_text()
        assert page.locator("#injected").count() == 0

        page.once("dialog", lambda d: d.accept())
        page.click("#plan-cleanup")
        page.wait_for_function(
            "() => document.querySelector('#plan-job').textContent.includes('plan-test-cleanup')")
        _wait_state(page, "succeeded")
        assert "undone" in page.inner_text("[data-group='1'] pre.detail")
        assert page.inner_text("tr[data-machine=db] .child-state") == "succeeded"
        shots.take(page, "plan-cleaned-up")

        page.click("text=Recovery plans")
        assert "plan-test-cleanup" in page.inner_text("tr[data-plan=shop]")
        page.click("text=Jobs")
        assert page.locator("#jobs a[href='/ui/plans/shop']").count() == 2  # the plan jobs lead to the plan
        assert page.locator("#jobs a[href='/ui/items/db']").count() == 2  # a child job to its machine

        reader = sign_in(browser, site, "reader")
        reader.goto(f"{url}/ui/plans/shop")
        assert reader.locator("#plan-test-failover, #plan-cleanup, #plan-confirm").count() == 0
        assert reader.inner_text("#plan-job-state") == "succeeded"
        reader.goto(f"{url}/ui/plans/nope")
        assert "no plan named 'nope'" in reader.inner_text(".error")
