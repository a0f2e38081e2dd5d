"""``POST /api/v1/sources``: any kind, its config validated by the source registry as on the CLI."""

from __future__ import annotations

from pathlib import Path

from tests.api.portal import Portal, make_disk


def test_kinds_list_options_and_capabilities(portal: Portal) -> None:
    kinds = {k["kind"]: k for k in portal.get("/sources/kinds").json()}
    assert list(kinds) == ["image", "qemu", "physical", "vsphere", "hyperv"]
    assert kinds["qemu"]["capabilities"]["change_tracking"] == "dirty-bitmap"
    assert {o["name"] for o in kinds["qemu"]["options"]} == {"qmp_socket", "guest_agent", "granularity"}


def test_add_any_kind_as_admin(portal: Portal, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "db.raw", 4 << 20)
    body = {"kind": "image", "name": "db", "config": {"paths": [str(disk)]}}
    assert portal.post("/sources", body, role="operator").status_code == 403
    r = portal.post("/sources", body, role="admin")
    assert r.status_code == 201, r.text
    assert r.json()["invitation"] is None
    detail = portal.get("/machines/db").json()
    assert detail.pop("readiness") is None  # the item view adds what is known of its readiness
    assert r.json()["machine"] == detail
    assert r.json()["machine"]["disks"][0]["size"] == 4 << 20
    r = portal.post("/sources", {"kind": "physical", "name": "srv1", "config": {"expires": "30m"}},
                    role="admin")
    assert r.status_code == 201, r.text
    assert r.json()["invitation"]["machine"] == "srv1" and r.json()["invitation"]["expires_in_s"] == 1800
    assert r.json()["machine"]["source"] == "physical"


def test_bad_input_is_refused_naming_it(portal: Portal, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "x.raw", 2 << 20)
    before = portal.get("/machines").json()
    for body, code, message in [
        ({"kind": "vmware", "name": "x"}, 400, "unknown source kind 'vmware'"),
        ({"kind": "image", "name": "x", "config": {"paths": [str(disk)], "colour": 1}}, 400,
         "no option 'colour'"),
        ({"kind": "image", "name": "x", "config": {"paths": 5}}, 400, "--paths takes a list"),
        ({"kind": "qemu", "name": "x", "config": {}}, 400, "needs --qmp-socket"),
        ({"kind": "image", "name": "web", "config": {"paths": [str(disk)]}}, 409, "already registered"),
        ({"kind": "image", "config": {"paths": [str(disk)], "x": 1}, "extra": 1}, 422, "extra"),
    ]:
        r = portal.post("/sources", body, role="admin")
        assert r.status_code == code and message in r.json()["error"], (body, r.text)
    assert [m["name"] for m in portal.get("/machines").json()] == [m["name"] for m in before]


def test_a_sources_network_map_through_the_api(portal: Portal, tmp_path: Path) -> None:
    """``GET /sources/{name}/verify`` and ``POST /sources/{name}/network-map`` say and do what
    ``rehost source verify`` / ``map-networks`` do (the map itself: tests/vault/test_source_check.py)."""
    from rehost.vault.models import MachineRow, SourceRow

    disk = make_disk(tmp_path / "vm1.raw", 2 << 20)
    assert portal.post("/sources", {"kind": "image", "name": "vm1", "config": {"paths": [str(disk)]}},
                       role="admin").status_code == 201
    r = portal.get("/sources/vm1/verify")
    assert r.status_code == 200 and r.json()["ok"] and not r.json()["maps_networks"]
    assert portal.post("/sources/vm1/network-map", {"pairs": {"Prod": "production"}},
                       role="admin").status_code == 400  # an image source keeps no map of its own
    vault = portal.open_vault()
    try:  # what a VMM-managed source stores (registering one needs a Hyper-V host)
        with vault.session() as s, s.begin():
            s.query(MachineRow).filter_by(name="vm1").one().spec = {"nics": [{"mac": "m", "network": "Prod"}]}
            src = s.query(SourceRow).filter_by(name="vm1").one()
            src.settings = {**src.settings, "network_map": {}}
    finally:
        vault.close()
    r = portal.get("/sources/vm1/verify").json()
    assert not r["ok"] and r["networks"] == [{"machine": "vm1", "network": "Prod", "target_network": None}]
    assert portal.post("/sources/vm1/network-map", {"pairs": {"Prod": "production"}},
                       role="operator").status_code == 403
    r = portal.post("/sources/vm1/network-map", {"pairs": {"Prod": "production"}}, role="admin")
    assert r.status_code == 200, r.text
    assert r.json()["ok"] and r.json()["network_map"] == {"Prod": "production"}
    assert portal.get("/sources/nope/verify").status_code == 404
