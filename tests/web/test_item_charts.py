"""The operator's view in headless Chromium (issue 18): an initial replication's progress
moves on the items page, and the item page draws RPO, bytes and duration charts from the
vault's per-cycle history of real cycles."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from rehost.vault import policies, protection
from rehost.vault.vault import Vault
from tests.api.portal import MiB, live_server, make_disk, make_vault, portal_for
from tests.web.conftest import Shots
from tests.web.test_dashboard import Site, sign_in

CYCLES = 20


def _percent(page: Any) -> float | None:
    """The running job's percentage as the items page shows it (None between two loads)."""
    try:
        value = page.evaluate("() => document.querySelector('tr[data-item=web] .pct')?.dataset.pct ?? null")
    except Exception:  # the page is reloading itself (it refreshes while jobs run)
        return None
    return None if value is None else float(value)


def _wait_percent(page: Any, other_than: float | None, timeout_s: float = 20) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pct = _percent(page)
        if pct is not None and pct != other_than and 0 < pct < 100:
            return pct
        time.sleep(0.1)
    raise AssertionError(f"the items page showed no percentage other than {other_than} in {timeout_s}s")


def test_an_initial_replication_shows_its_progress_moving(browser: Any, tmp_path: Path, shots: Shots) -> None:
    # 40 MiB read at 4 MB/s: ~10 s. A cycle counts a chunk done once it is read, diffed and
    # sealed: reads go 8 chunks (MiB) per request and 12 chunks are in flight, so the
    # percentage moves in 8 MiB steps, from the second step on. One random MiB over and over:
    # every chunk is read (throttled) but stored once; all-different data would wait on
    # throttled pack writes as well, and the test would take twice as long.
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(MiB) * 40)
    tokens = make_vault(tmp_path, disk, replicate=False)
    vault = Vault.open(tmp_path / "vault")
    try:
        policies.create_policy(vault, "slow", bandwidth="4MB/s")
    finally:
        vault.close()
    with portal_for(tmp_path, tokens) as portal, live_server(portal.app) as url:
        site = Site(url, tokens)
        page = sign_in(browser, site, "operator")
        r = httpx.post(f"{url}/api/v1/machines/web/enable", json={"policy": "slow", "target": "here"},
                       headers={"Authorization": f"Bearer {tokens['operator']}"})
        assert r.status_code == 200, r.text
        page.goto(f"{url}/ui/items")
        first = _wait_percent(page, None)
        row = page.locator("tr[data-item=web]")
        assert "initial replication" in row.inner_text() and f"{first}%" in row.inner_text()
        shots.take(page, "progress-first")
        second = _wait_percent(page, first)  # the page reloads itself while the job runs
        shots.take(page, "progress-later")
        assert second > first, (first, second)
        assert f"{second}%" in page.locator("tr[data-item=web] .pct").inner_text()


def test_the_item_page_charts_twenty_real_cycles(browser: Any, tmp_path: Path, shots: Shots) -> None:
    disk = make_disk(tmp_path / "disk.raw", 4 * MiB)
    tokens = make_vault(tmp_path, disk)  # its first cycle
    vault = Vault.open(tmp_path / "vault")
    try:
        policies.create_policy(vault, "tight", rpo_threshold="2s", crash_every="1s", retention="1h")
        policies.attach(vault, "web", "tight")
        for i in range(CYCLES):
            with open(disk, "r+b") as f:  # a few changed blocks, more each time
                for b in range(1 + i % 5):
                    f.seek((b * 97 + i * 13) % 1024 * 4096)
                    f.write(os.urandom(4096))
            protection.replicate(vault, "web")
            time.sleep(0.05 * (i % 4))  # cycles a little apart: a sawtooth with teeth
    finally:
        vault.close()
    with portal_for(tmp_path, tokens) as portal, live_server(portal.app) as url:
        page = sign_in(browser, Site(url, tokens), "reader")
        page.goto(f"{url}/ui/items/web?window=15s")
        rpo = page.locator("#rpo-chart")
        assert rpo.is_visible()
        assert rpo.locator("circle.pt").count() >= CYCLES + 1
        assert rpo.locator("polyline.series").count() == 1 and rpo.locator("line.threshold").count() == 1
        assert "threshold 2s" in (rpo.text_content() or "")
        bars = page.locator("#bytes-chart rect.bar")
        assert bars.count() >= CYCLES + 1
        sizes = [float(bars.nth(i).get_attribute("data-v") or 0) for i in range(bars.count())]
        # the first copy, then a few changed blocks per cycle
        assert sizes[0] > 200 * 1024 and set(sizes[1:]) <= {4096.0 * n for n in range(1, 6)}
        assert page.locator("#duration-chart rect.bar").count() >= CYCLES + 1
        assert "changed" in page.inner_text("#last-cycle")  # cycles run here, not by the scheduler
        page.locator("#charts").scroll_into_view_if_needed()
        shots.take(page, "item-charts")
        page.goto(f"{url}/ui/items/web")  # the default window: the last 24 h
        assert page.locator("#rpo-chart circle.pt").count() >= CYCLES + 1
        shots.take(page, "item-charts-24h")
