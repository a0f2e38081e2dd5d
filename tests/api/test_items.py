"""Sources, replicated items, recovery points and the operations on an item, through the API
over a real vault: the JSON is the CLI's, refusals say why with the right code."""

from __future__ import annotations

from pathlib import Path

from tests.api.portal import Portal, make_disk
from tests.cli_helpers import rehost


def _without_clock(items: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """RPO grows while the test runs; everything else must match exactly."""
    return [{**it, "health": {**it["health"], "rpo_seconds": None}} for it in items]


def test_machines_are_what_the_cli_shows(portal: Portal) -> None:
    api = portal.get("/machines").json()
    cli = rehost(portal.vault, "machines", "--json").json()
    assert _without_clock(api) == _without_clock(cli)
    assert api[0]["state"] == "protected" and api[0]["points"] == 1


def test_machine_detail_has_disks_health_placement_and_target(portal: Portal) -> None:
    r = portal.post("/machines/web/enable", {"target": "here", "network_map": {"default": "isolated"},
                                             "replicate": False})
    assert r.status_code == 200, r.text
    m = portal.get("/machines/web").json()
    assert m["assigned_target"] == "here" and m["network_map"] == {"default": "isolated"}
    assert m["disks"][0]["size"] == 8 << 20 and m["disks"][0]["format"] == "raw"
    assert m["health"]["status"] == "healthy" and m["placement"] == {}
    r = portal.get("/machines/nope")
    assert r.status_code == 404 and r.json() == {"error": "no machine named 'nope' (registered: web)"}


def test_points_are_what_the_cli_shows(portal: Portal) -> None:
    assert portal.get("/machines/web/points").json() == rehost(portal.vault, "points", "web", "--json").json()
    assert portal.get("/machines/nope/points").status_code == 404


def test_add_image_source_and_its_refusals(portal: Portal, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "db.raw", 4 << 20)
    r = portal.post("/sources/image", {"name": "db", "paths": [str(disk)]}, role="admin")
    assert r.status_code == 201 and r.json()["state"] == "registered" and r.json()["points"] == 0
    assert {s["name"]: s["machines"] for s in portal.get("/sources").json()} == {"db": ["db"], "web": ["web"]}
    r = portal.post("/sources/image", {"name": "db", "paths": [str(disk)]}, role="admin")
    assert r.status_code == 409 and "already registered" in r.json()["error"]
    r = portal.post("/sources/image", {"name": "db2", "paths": [str(tmp_path / "missing.raw")]}, role="admin")
    assert r.status_code == 400 and "missing.raw" in r.json()["error"]
    r = portal.post("/sources/image", {"name": "bad name!", "paths": [str(disk)]}, role="admin")
    assert r.status_code == 400 and "is not valid" in r.json()["error"]
    r = portal.post("/sources/image", {"name": "x", "paths": []}, role="admin")
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request: paths:")
    r = portal.post("/sources/image", {"name": "x", "paths": [str(disk)], "colour": "blue"}, role="admin")
    assert r.status_code == 422 and "colour" in r.json()["error"]


def test_enable_replicates_as_a_job_and_disable_detaches_the_policy(portal: Portal) -> None:
    assert portal.post("/policies", {"name": "gold", "rpo_threshold": "5m"}, role="admin").status_code == 201
    r = portal.post("/machines/web/enable", {"policy": "gold", "target": "here"})
    assert r.status_code == 200 and r.json()["policy"] == "gold" and r.json()["assigned_target"] == "here"
    jobs = portal.get("/jobs", params={"machine": "web"}).json()
    assert jobs[0]["kind"] == "replicate"
    job = portal.wait_job(jobs[0]["id"])
    assert job["state"] == "succeeded" and job["steps"][0]["done"] == job["steps"][0]["total"] == 8 << 20
    assert portal.get("/machines/web").json()["points"] == 2
    r = portal.post("/machines/web/disable")
    assert r.status_code == 200 and r.json()["policy"] is None and r.json()["points"] == 2


def test_enable_checks_everything_before_changing_anything(portal: Portal) -> None:
    r = portal.post("/machines/web/enable", {"policy": "nope", "target": "here"})
    assert r.status_code == 404 and "no policy named 'nope'" in r.json()["error"]
    r = portal.post("/machines/web/enable", {"target": "here", "network_map": {"default": "internet"}})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    r = portal.post("/machines/web/enable", {"target": "elsewhere"})
    assert r.status_code == 404 and "no target named 'elsewhere'" in r.json()["error"]
    m = portal.get("/machines/web").json()
    assert m["policy"] is None and m["assigned_target"] is None and m["network_map"] == {}
    assert portal.get("/jobs").json() == []


def test_replicate_answers_202_with_the_job_and_its_location(portal: Portal) -> None:
    r = portal.post("/machines/web/replicate", {"app_consistent": True})
    assert r.status_code == 202 and r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
    job = portal.wait_job(r.json()["id"])
    assert job["state"] == "succeeded", job
    points = portal.get("/machines/web/points").json()
    assert len(points) == 2 and points[-1]["id"][:12] in job["steps"][0]["detail"]


def test_operations_refused_in_the_wrong_state_say_what_to_do(portal: Portal, tmp_path: Path) -> None:
    r = portal.post("/machines/web/complete")
    assert r.status_code == 409
    assert r.json()["error"] == ("cannot complete web: complete comes after failover: "
                                 "run rehost failover web first")
    r = portal.post("/machines/web/test-cleanup")
    assert r.status_code == 409 and "no test failover of web to clean up" in r.json()["error"]
    r = portal.post("/machines/web/test-failover", {"point": "zz"})
    assert r.status_code == 400 and "is not a point" in r.json()["error"]
    r = portal.post("/machines/web/failover", {"point": "abcdef12"})
    assert r.status_code == 404 and "no recovery point 'abcdef12'" in r.json()["error"]
    r = portal.post("/machines/web/failover", {"boot_timeout": -1})
    assert r.status_code == 422 and "boot_timeout" in r.json()["error"]
    disk = make_disk(tmp_path / "new.raw", 2 << 20)
    portal.post("/sources/image", {"name": "new", "paths": [str(disk)]}, role="admin")
    r = portal.post("/machines/new/test-failover", {})
    assert r.status_code == 409 and "run rehost replicate new" in r.json()["error"]
    assert portal.get("/jobs").json() == []  # nothing was started by a refused request


def test_add_physical_source_gives_the_passphrase_once(portal: Portal) -> None:
    r = portal.post("/sources/physical", {"name": "srv1"}, role="operator")
    assert r.status_code == 403
    r = portal.post("/sources/physical", {"name": "srv1", "expires": "30m"}, role="admin")
    assert r.status_code == 201, r.text
    invitation = r.json()
    assert invitation["machine"] == "srv1" and invitation["expires_in_s"] == 1800
    assert len(invitation["passphrase"]) >= 24 and len(invitation["fingerprint"]) >= 64
    m = portal.get("/machines/srv1").json()
    assert m["source"] == "physical" and m["disks"] == []
    assert m["agent"] == {"enrolled_at": None, "address": None, "inventory": {}}  # not registered yet
    assert "waiting for its agent" in m["state_reason"]
    assert invitation["passphrase"] not in portal.get("/machines").text  # shown once, stored hashed
    r = portal.post("/sources/physical", {"name": "srv1"}, role="admin")
    assert r.status_code == 409 and "already registered" in r.json()["error"]
    r = portal.post("/sources/physical", {"name": "srv2", "expires": "soon"}, role="admin")
    assert r.status_code == 400 and "not a duration" in r.json()["error"]
    r = portal.post("/sources/physical", {"name": "srv2", "expires": "30d"}, role="admin")
    assert r.status_code == 400 and "between 1 minute and 7 days" in r.json()["error"]
    assert portal.get("/machines/srv2").status_code == 404  # refused: nothing registered


def test_one_vm_of_a_vapp_through_the_api(portal: Portal, tmp_path: Path) -> None:
    """A vApp (vCenter's MultiVmVapps.ovf): without ``vm`` refused with the choice, with it
    the one VM is registered, its disk as the export holds it."""
    from tests.disks.test_ovf_import import disk, real_ova

    _, d1 = disk(tmp_path, "d1.vmdk", 1)
    _, d2 = disk(tmp_path, "d2.vmdk", 2)
    ova = real_ova(tmp_path / "multi.ova", "MultiVmVapps.ovf",
                   {"MultiVmVapps-disk1.vmdk": d1, "MultiVmVapps-disk2.vmdk": d2})
    r = portal.post("/sources/image", {"paths": [str(ova)]}, role="admin")
    assert r.status_code == 400 and "testVm2" in r.json()["error"], r.text
    r = portal.post("/sources/image", {"paths": [str(ova)], "vm": "testVm2"}, role="admin")
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "testVm2" and r.json()["disks"][0]["size"] == 16 << 20
