"""Test failover, cleanup, failover and complete driven through the API, with real boots of
the tiny Linux image under emulation; the jobs are polled as the dashboard polls them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import set_marker
from tests.api.portal import Portal, kill_leftovers, make_vault, portal_for


@pytest.fixture
def boot_portal(tmp_path: Path, tiny_image: Path, need_qemu: None) -> Iterator[Portal]:
    set_marker(tiny_image, "api")
    tokens = make_vault(tmp_path, tiny_image)
    try:
        with portal_for(tmp_path, tokens) as p:
            yield p
    finally:
        kill_leftovers(str(tmp_path))
        kill_leftovers("web-test")


@pytest.mark.slow
def test_test_failover_then_cleanup_through_the_api(boot_portal: Portal) -> None:
    p = boot_portal
    point = p.get("/machines/web/points").json()[-1]["id"]
    r = p.post("/machines/web/test-failover", {"point": point[:12]})
    assert r.status_code == 202, r.text
    job = p.wait_job(r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}
    assert "REHOST-BOOT-OK marker=api" in steps["verify_boot"]["detail"]
    assert "isolated network" in steps["start"]["detail"]
    assert p.get("/machines/web").json()["state"] == "test_failover"
    # a second test failover is refused while the first runs, with what to do
    r = p.post("/machines/web/test-failover", {})
    assert r.status_code == 409 and "clean it up first" in r.json()["error"]

    job = p.wait_job(p.post("/machines/web/test-cleanup").json()["id"])
    assert job["state"] == "succeeded", job
    assert p.get("/machines/web").json()["state"] == "protected"
    assert not (p.root / "target" / "web-test").exists()


@pytest.mark.slow
def test_failover_and_complete_through_the_api(boot_portal: Portal) -> None:
    p = boot_portal
    r = p.post("/machines/web/failover", {"shutdown_source": True})
    assert r.status_code == 202, r.text
    job = p.wait_job(r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["shutdown_source"]["state"] == "skipped" and steps["final_sync"]["state"] == "succeeded"
    assert steps["final_sync"]["done"] == steps["final_sync"]["total"] > 0  # progress was reported
    m = p.get("/machines/web").json()
    assert m["state"] == "failed_over" and m["target"] == "here" and m["runs_at"]
    assert p.post(f"/jobs/{job['id']}/cancel").status_code == 409  # done: nothing to cancel

    job = p.wait_job(p.post("/machines/web/complete").json()["id"])
    assert job["state"] == "succeeded", job
    assert p.get("/machines/web").json()["state"] == "migration_completed"
    assert p.get("/machines/web/points").json() == []
