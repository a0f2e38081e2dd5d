"""An item's probes and its last failover's verdict in headless Chromium, on the memory target
(a declared test double whose guest port 22 is a local server that accepts and closes without
a byte): the failed probe's detail on the item page and on the job page, then "Complete
migration" refused by the verdict, forced from the page with a reason that the job records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.plan_world import make_plan_vault
from tests.api.portal import live_server, portal_for
from tests.api.probe_world import expose, silent_service
from tests.web.conftest import Shots
from tests.web.test_dashboard import Site, sign_in, wait_job

NO_BYTE = "accepted the connection but no byte came back"
REASON = "ssh <b>checked</b> by hand"


def test_item_page_shows_a_failed_probe_and_complete_is_forced_with_a_reason(
        browser: Any, tmp_path: Path, shots: Shots) -> None:
    tokens = make_plan_vault(tmp_path, ("web",))
    with portal_for(tmp_path, tokens) as portal, silent_service() as silent, \
            live_server(portal.app) as url:
        expose(portal.vault, "web", 22, silent)
        assert portal.post("/machines/web/probes", {"name": "ssh", "kind": "tcp", "port": 22,
                                                    "timeout_s": 1.5}).status_code == 201
        r = portal.post("/machines/web/failover", {"point": "latest-processed"})
        job = portal.wait_job(r.json()["id"])
        assert job["state"] == "failed"

        page = sign_in(browser, Site(url, tokens), "operator")
        page.goto(f"{url}/ui/items/web")
        assert "TCP 22, any reply" in page.inner_text("#probes tr[data-probe=ssh]")
        assert page.inner_text("#last-verdict .verdict") == "failed"
        failed = page.locator("#last-verdict li.check.fail[data-check=ssh]")
        assert failed.count() == 1 and NO_BYTE in failed.inner_text()
        assert page.locator("#last-verdict li.check.ok[data-check=boot]").count() == 1
        shots.take(page, "item-with-failed-probe")

        page.click(f"#last-verdict a[href='/ui/jobs/{job['id']}']")
        page.wait_for_url(f"{url}/ui/jobs/{job['id']}")
        assert NO_BYTE in page.inner_text("#job-verdict li.check.fail[data-check=ssh]")
        shots.take(page, "failover-job-verdict")

        # refused by the verdict: the page asks why, and the reason goes with force
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(f"{dialog.type}: {dialog.message}")
            dialog.accept(REASON) if dialog.type == "prompt" else dialog.accept()

        page.on("dialog", answer)
        page.goto(f"{url}/ui/items/web")
        page.click("#complete")
        page.wait_for_url(f"{url}/ui/jobs/*")
        assert wait_job(page, 60) == "succeeded"
        assert [a.split(":")[0] for a in asked] == ["confirm", "prompt"]
        assert NO_BYTE in asked[1] and "Complete anyway?" in asked[1]
        forced = page.inner_text("#job-forced")
        assert f"reason: {REASON}" in forced and NO_BYTE in forced
        assert page.locator("#job-forced b").count() == 0  # the reason is text, not markup
        shots.take(page, "complete-forced-with-reason")
