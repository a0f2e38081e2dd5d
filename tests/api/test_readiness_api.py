"""GET /machines/{name}/readiness: the report the CLI prints, from the per-point cache (the
first inspection of a point is an appliance launch: tests/vault/test_readiness.py has one)."""

from __future__ import annotations

from rehost.guest.inspect import Inspection
from rehost.vault import readiness as vault_readiness
from tests.api.portal import Portal


def test_readiness_report_and_refusals(portal: Portal) -> None:
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

    assert portal.get("/machines/web/readiness", params={"target": "nowhere"}).status_code == 404
    assert portal.get("/machines/web/readiness", params={"point": "zz"}).status_code == 400
    assert portal.get("/machines/nobody/readiness").status_code == 404
