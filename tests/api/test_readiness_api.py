"""GET /machines/{name}/readiness: the report the CLI prints, from the per-point cache (the
first inspection of a point is an appliance launch: tests/vault/test_readiness.py has one), and
the readiness step of a test failover started through the API."""

from __future__ import annotations

import pytest

from rehost.guest.inspect import Inspection
from rehost.vault import protection, targets
from rehost.vault import readiness as vault_readiness
from tests.api.portal import Portal
from tests.inspections import UNREADY_FOR_AZURE, judge_memory_as_azure, seed


def test_readiness_report_and_refusals(portal: Portal) -> None:
    known = portal.get("/machines/web").json()["readiness"]  # the item view inspects nothing
    assert known["status"] == "not inspected" and known["target"] == "here"
    assert known["text"] == "not inspected (rehost readiness web)"
    vault = portal.open_vault()
    try:
        first = vault_readiness.readiness(  # a stand-in inspection fills the point's cache
            vault, "web", inspector=lambda uris, fmt: Inspection(disks=tuple(uris), os_type="unknown"))
    finally:
        vault.close()
    r = portal.get("/machines/web/readiness")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cached"] and body["point"] == first.point and body["target"] == "here"
    assert body["target_kind"] == "local" and body["status"] == "fail"  # no OS found: will not boot
    assert body["requirements"][0]["name"] == "operating system"
    assert Inspection.from_json(body["inspection"]) == first.inspection
    known = portal.get("/machines/web").json()["readiness"]  # now from the cached inspection
    assert known == {"point": first.point, "target": "here", "status": "fail", "failed": ["operating system"],
                     "warnings": 0, "text": "fail (1)"}

    assert portal.get("/machines/web/readiness", params={"target": "nowhere"}).status_code == 404
    assert portal.get("/machines/web/readiness", params={"point": "zz"}).status_code == 400
    assert portal.get("/machines/nobody/readiness").status_code == 404


def test_a_test_failover_stops_at_readiness_unless_forced_with_a_reason(
        portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory target (judged by Azure's rules) and a cached hand-made inspection: no QEMU,
    no appliance. The API takes ``force_readiness`` with ``reason`` as ``complete`` takes
    ``force`` with ``reason``."""
    judge_memory_as_azure(monkeypatch)
    vault = portal.open_vault()
    try:
        targets.add_target(vault, "memory", "double", {"path": portal.root / "double"})
        point = protection.list_points(vault, "web")[-1].id
        seed(vault, "web", point, UNREADY_FOR_AZURE)
    finally:
        vault.close()
    for bad in ({"force_readiness": True}, {"force_readiness": True, "reason": "  "}, {"reason": "why"}):
        r = portal.post("/machines/web/test-failover", {"target": "double", **bad})
        assert r.status_code == 422, r.text

    r = portal.post("/machines/web/test-failover", {"target": "double"})
    assert r.status_code == 202, r.text
    job = portal.wait_job(r.json()["id"])
    assert job["state"] == "failed" and "hv_storvsc driver" in job["error"]
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["readiness"]["state"] == "failed" and steps["create_machine"]["state"] == "pending"
    assert not (portal.root / "double" / "web-test").exists()
    assert portal.get("/machines/web").json()["state"] == "protected"

    r = portal.post("/machines/web/test-failover", {"target": "double", "force_readiness": True,
                                                    "reason": " checked by hand "})
    assert r.status_code == 202, r.text
    job = portal.wait_job(r.json()["id"])
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["readiness"]["state"] == "succeeded"
    assert "FORCED" in steps["readiness"]["detail"] and "hv_storvsc driver" in steps["readiness"]["detail"]
    assert steps["readiness"]["detail"].endswith("reason: checked by hand")
    assert steps["create_machine"]["state"] == "succeeded"  # it went on (this disk has no MBR: no boot)
    assert "checked by hand" in portal.get("/machines/web").json()["state_reason"]
    assert portal.wait_job(portal.post("/machines/web/test-cleanup").json()["id"])["state"] == "succeeded"


def test_fix_ups_through_the_api(portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fixups`` names the fix-ups: an unknown one is refused before a job exists; a known
    one reaches the job's fix-up step (the appliance is a stand-in here that refuses the disk:
    the real fix-ups are in tests/vault/test_fixups_debian.py)."""
    from rehost.guest.fixups import FixUpError
    from rehost.vault import fixup

    def stand_in(*args: object) -> None:
        raise FixUpError("fix-ups exist for Linux guests only; this one is unknown")

    monkeypatch.setattr(fixup, "apply_fixups", stand_in)
    r = portal.post("/machines/web/test-failover", {"fixups": ["initrd"]})
    assert r.status_code == 400 and "unknown fix-up 'initrd': choose from initramfs" in r.text, r.text
    assert portal.get("/machines/web").json()["state"] == "protected"  # no job was made
    r = portal.post("/plans/none/failover", {"cleanup": True, "fixups": ["dhcp"]})
    assert r.status_code == 422 and "go with a (test) failover" in r.text, r.text

    monkeypatch.setenv(vault_readiness.INSPECT_ENV, "off")
    r = portal.post("/machines/web/test-failover", {"fixups": ["dhcp", "fstab"], "boot_timeout": 5})
    assert r.status_code == 202, r.text
    job = portal.wait_job(r.json()["id"])
    steps = {s["name"]: s for s in job["steps"]}
    assert steps["fix_up"]["title"] == "Fix up the copy (dhcp, fstab)"
    assert job["state"] == "failed" and "fix-ups exist for Linux guests only" in job["error"]
    assert steps["create_machine"]["state"] == "pending"
    assert portal.wait_job(portal.post("/machines/web/test-cleanup").json()["id"])["state"] == "succeeded"
