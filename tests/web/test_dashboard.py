"""The dashboard in headless Chromium: sign in with a token, look around, run a replication
and a test failover from the item page, and watch the jobs reach success live."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rehost.testkit.tinylinux import set_marker
from tests.api.portal import kill_leftovers, live_server, make_disk, make_vault, portal_for
from tests.web.conftest import Shots


@dataclass
class Site:
    url: str
    tokens: dict[str, str]


@contextmanager
def site_over(root: Path, disk: Path) -> Iterator[Site]:
    tokens = make_vault(root, disk)
    with portal_for(root, tokens) as portal, live_server(portal.app) as url:
        yield Site(url, tokens)


def sign_in(browser: Any, site: Site, role: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/ui/")
    assert page.url.endswith("/ui/login")  # every page needs a token
    page.fill("#token", site.tokens[role])
    page.click("#sign-in")
    page.wait_for_url(f"{site.url}/ui/")
    return page


def wait_job(page: Any, timeout_s: float) -> str:
    """Wait on the job page until the live-polled state leaves running/queued."""
    page.wait_for_function(
        "() => !['running', 'queued'].includes(document.querySelector('#job-state').textContent.trim())",
        timeout=timeout_s * 1000)
    return str(page.inner_text("#job-state")).strip()


def clean_up_test(page: Any, site: Site, shots: Shots) -> None:
    """From the item page of ``web`` in test failover: clean up, and see it protected again."""
    page.click("#test-cleanup")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
    assert wait_job(page, 120) == "succeeded"
    page.goto(f"{site.url}/ui/items/web")
    assert "protected" in page.inner_text("#item-name")
    shots.take(page, "after-cleanup")


def test_sign_in_browse_and_replicate(browser: Any, tmp_path: Path, shots: Shots) -> None:
    with site_over(tmp_path, make_disk(tmp_path / "disk.raw")) as site:
        page = browser.new_page()
        page.goto(f"{site.url}/ui/login")
        page.fill("#token", "rht_not-a-token")
        page.click("#sign-in")
        assert "not valid" in page.inner_text("#login-error")
        shots.take(page, "login-refused")

        page = sign_in(browser, site, "operator")
        assert page.inner_text(".tile >> nth=0").startswith("1")
        shots.take(page, "overview")
        page.click("text=Replicated items")
        row = page.locator("tr[data-item=web]")
        assert "protected" in row.inner_text() and "healthy" in row.inner_text()
        shots.take(page, "items")
        page.click("text=Infrastructure")
        assert "here" in page.inner_text("#targets") and "web" in page.inner_text("#sources")
        shots.take(page, "infrastructure")

        page.goto(f"{site.url}/ui/items/web")
        assert page.locator("#points tbody tr").count() == 1
        page.click("#replicate")
        page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
        assert wait_job(page, 60) == "succeeded"
        assert "succeeded" in page.inner_text("[data-step=replicate] .step-state")
        shots.take(page, "replicate-job")
        page.goto(f"{site.url}/ui/items/web")
        assert page.locator("#points tbody tr").count() == 2
        page.click("text=Jobs")
        assert "replicate" in page.inner_text("#jobs")

        reader = sign_in(browser, site, "reader")
        reader.goto(f"{site.url}/ui/items/web")
        assert reader.locator("#open-test-failover").count() == 0  # a reader gets no action buttons
        shots.take(reader, "reader-item")


@pytest.mark.slow
def test_test_failover_from_the_dialog(browser: Any, tmp_path: Path, tiny_image: Path, need_qemu: None,
                                       shots: Shots) -> None:
    set_marker(tiny_image, "dashboard")
    try:
        with site_over(tmp_path, tiny_image) as site:
            page = sign_in(browser, site, "operator")
            page.click("text=Replicated items")
            page.click("tr[data-item=web] >> text=web")
            page.wait_for_url(f"{site.url}/ui/items/web")
            shots.take(page, "item")

            page.click("#open-test-failover")
            dialog = page.locator("#failover-dialog")
            assert dialog.is_visible() and "Test failover of web" in page.inner_text("#failover-title")
            assert not page.locator("#shutdown-row").is_visible()  # only a real failover shuts down
            options = page.locator("#failover-point option")
            assert options.count() == 3  # latest, latest-processed, and the one point
            page.select_option("#failover-point", index=2)
            shots.take(page, "failover-dialog")
            page.click("#failover-start")

            page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
            shots.take(page, "test-failover-running")
            assert wait_job(page, 300) == "succeeded", page.inner_text("#steps")
            assert "REHOST-BOOT-OK marker=dashboard" in page.inner_text("[data-step=verify_boot] .detail")
            shots.take(page, "test-failover-succeeded")

            page.goto(f"{site.url}/ui/items/web")
            assert "test failover" in page.inner_text("#item-name")
            clean_up_test(page, site, shots)
    finally:
        kill_leftovers(str(tmp_path))


def test_the_audit_page_shows_who_did_what_to_admins_only(browser: Any, tmp_path: Path, shots: Shots) -> None:
    with site_over(tmp_path, make_disk(tmp_path / "disk.raw")) as site:
        page = sign_in(browser, site, "admin")
        page.goto(f"{site.url}/ui/items/web")
        page.click("#replicate")
        page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]+$"))
        assert wait_job(page, 60) == "succeeded"
        page.click("text=Audit")
        rows = page.locator("#audit tbody tr")
        first = rows.filter(has_text="POST /api/v1/machines/{name}/replicate").first.inner_text()
        assert "token:admin-token (admin)" in first and "ui" in first and "ok 202" in first
        assert rows.filter(has_text="job replicate ended").count() == 1
        assert str(tmp_path) in page.inner_text("#roots")  # the folder make_vault allowed
        shots.take(page, "audit")

        reader = sign_in(browser, site, "reader")
        assert reader.locator("nav >> text=Audit").count() == 0
        reader.goto(f"{site.url}/ui/audit")
        assert "needs admin" in reader.inner_text("main")
