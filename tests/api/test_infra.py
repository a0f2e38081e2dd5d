"""Targets, policies and tokens through the API: the same rules as the CLI, as 4xx messages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.api.portal import Portal


def test_targets_add_list_verify(portal: Portal, tmp_path: Path) -> None:
    r = portal.post("/targets/local", {"name": "dr", "path": str(tmp_path / "dr"), "memory_mib": 512},
                    role="admin")
    assert r.status_code == 201 and r.json()["settings"]["memory_mib"] == 512
    assert r.json()["verified_ok"] is None
    assert (tmp_path / "dr").is_dir()
    assert [t["name"] for t in portal.get("/targets").json()] == ["dr", "here"]
    r = portal.post("/targets/local", {"name": "dr", "path": str(tmp_path / "dr2")}, role="admin")
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    (tmp_path / "file").write_text("x")
    r = portal.post("/targets/local", {"name": "f", "path": str(tmp_path / "file")}, role="admin")
    assert r.status_code == 400 and "is not a folder" in r.json()["error"]
    r = portal.post("/targets/local", {"name": "k", "path": str(tmp_path / "k"), "accel": "xen"},
                    role="admin")
    assert r.status_code == 422 and "accel" in r.json()["error"]
    assert portal.post("/targets/nope/verify").status_code == 404


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_verify_reports_checks_and_remembers_the_verdict(portal: Portal) -> None:
    r = portal.post("/targets/here/verify")
    assert r.status_code == 200
    names = {c["name"] for c in r.json()["checks"]}
    assert {"qemu", "compute", "storage"} <= names
    t = portal.get("/targets").json()[0]
    assert t["verified_ok"] == r.json()["ok"] and t["verified_at"] is not None and t["verify_report"]


def test_policies_create_update_attach(portal: Portal) -> None:
    r = portal.post("/policies", {"name": "gold", "rpo_threshold": "5m", "retention": "24h",
                                  "app_consistent_every": "1h", "crash_consistent_every": "30s",
                                  "bandwidth": "100MB/s"}, role="admin")
    assert r.status_code == 201
    assert r.json() == {"name": "gold", "rpo_threshold_s": 300, "retention_s": 86400,
                        "app_consistent_every_s": 3600, "crash_consistent_every_s": 30,
                        "bandwidth_bps": 100_000_000, "bandwidth_schedule": [], "bandwidth_windows": []}
    r = portal.client.patch("/api/v1/policies/gold", json={"rpo_threshold": "2m", "bandwidth": "none"},
                            headers=portal.auth("admin"))
    assert r.status_code == 200 and r.json()["rpo_threshold_s"] == 120 and r.json()["bandwidth_bps"] is None
    assert portal.get("/policies").json() == [r.json()]
    r = portal.post("/policies/gold/attach", {"machine": "web"}, role="admin")
    assert r.status_code == 200 and r.json()["policy"] == "gold"
    assert portal.post("/policies/gold/attach", {"machine": "nope"}, role="admin").status_code == 404


def test_policy_bandwidth_schedule(portal: Portal) -> None:
    schedule = ["mon-fri 08:00-18:00=10MB/s", "sat, sun 00:00-24:00=none"]
    r = portal.post("/policies", {"name": "gold", "bandwidth": "100MB/s", "bandwidth_schedule": schedule},
                    role="admin")
    assert r.status_code == 201, r.text
    assert r.json()["bandwidth_schedule"] == ["mon-fri 08:00-18:00=10MB/s", "sat,sun 00:00-24:00=none"]
    assert r.json()["bandwidth_windows"] == [
        {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00", "bps": 10_000_000},
        {"days": [5, 6], "start": "00:00", "end": "24:00", "bps": None}]
    assert portal.get("/policies").json() == [r.json()]

    def patch(body: dict[str, object]) -> Any:
        return portal.client.patch("/api/v1/policies/gold", json=body, headers=portal.auth("admin"))

    r = patch({"rpo_threshold": "2m"})  # what is not given is kept
    assert r.status_code == 200 and len(r.json()["bandwidth_schedule"]) == 2
    r = patch({"bandwidth_schedule": ["22:00-06:00=50MB/s"]})  # replaces the schedule
    assert r.status_code == 200 and r.json()["bandwidth_schedule"] == ["22:00-06:00=50MB/s"]
    r = patch({"bandwidth_schedule": ["mon-fri 08:00-25:00=1MB/s"]})
    assert r.status_code == 400 and "'25:00' is not a time" in r.json()["error"], r.text
    assert portal.get("/policies").json()[0]["bandwidth_schedule"] == ["22:00-06:00=50MB/s"]
    r = patch({"bandwidth_schedule": []})  # clears it
    assert r.status_code == 200 and r.json()["bandwidth_schedule"] == r.json()["bandwidth_windows"] == []
    assert r.json()["bandwidth_bps"] == 100_000_000


@pytest.mark.parametrize(("body", "code", "message"), [
    ({"name": "p", "rpo_threshold": "soon"}, 422, "'soon' is not valid: use a number and s, m, h or d"),
    ({"name": "p", "rpo_threshold": "99999999999999999999d"}, 422, "is not valid"),
    ({"name": "p", "bandwidth": "fast"}, 422, "'fast' is not valid: use a rate"),
    ({"name": "p", "bandwidth": "1e999MB/s"}, 422, "is not valid"),
    ({"name": "p", "rpo_threshold": "10s", "crash_consistent_every": "1m"}, 400, "must not exceed"),
    ({"name": "p", "retention": "1m", "rpo_threshold": "5m"}, 400, "at least the --rpo-threshold"),
    ({"name": "p", "rpo_threshold": "0s"}, 400, "must be positive"),
    ({"name": "p", "bandwidth": "5zz/s"}, 400, "not a bandwidth"),
    ({"name": "no spaces"}, 400, "policy name 'no spaces' is not valid"),
    ({"name": "p", "bandwidth_schedule": ["mon-fry 08:00-18:00=1MB/s"]}, 400, "'fry' is not a day"),
    ({"name": "p", "bandwidth_schedule": ["08:00-08:00=1MB/s"]}, 400, "a window must not be empty"),
    ({"name": "p", "bandwidth_schedule": ["08:00-18:00=fast"]}, 400, "'fast' is not a bandwidth"),
    ({"name": "p", "bandwidth_schedule": ["08:00-18:00"]}, 400, "has no '=RATE'"),
    ({"name": "p", "bandwidth_schedule": "08:00-18:00=1MB/s"}, 422, "bandwidth_schedule"),
    ({"name": "p", "bandwidth_schedule": [""]}, 422, "bandwidth_schedule"),
    ({"rpo_threshold": "5m"}, 422, "name: Field required"),
])
def test_policy_refusals_are_clear(portal: Portal, body: dict[str, Any], code: int, message: str) -> None:
    r = portal.post("/policies", body, role="admin")
    assert r.status_code == code and message in r.json()["error"], r.text
    assert portal.get("/policies").json() == []


def test_policy_update_and_attach_refusals(portal: Portal) -> None:
    r = portal.client.patch("/api/v1/policies/nope", json={}, headers=portal.auth("admin"))
    assert r.status_code == 404 and "no policy named 'nope'" in r.json()["error"]
    portal.post("/policies", {"name": "gold"}, role="admin")
    assert portal.post("/policies", {"name": "gold"}, role="admin").status_code == 409
    r = portal.post("/policies/nope/attach", {"machine": "web"}, role="admin")
    assert r.status_code == 404


def test_tokens_made_by_an_admin_work_with_their_role(portal: Portal) -> None:
    r = portal.post("/tokens", {"name": "alice", "role": "operator"}, role="admin")
    assert r.status_code == 201 and r.json()["token"].startswith("rht_")
    alice = {"Authorization": f"Bearer {r.json()['token']}"}
    assert portal.client.get("/api/v1/whoami", headers=alice).json() == {"name": "alice", "role": "operator"}
    listed = portal.get("/tokens", "admin").json()
    assert [t["name"] for t in listed] == ["admin-token", "alice", "operator-token", "reader-token"]
    assert all("token" not in t for t in listed)  # secrets are shown once, at creation
    assert portal.post("/tokens", {"name": "alice", "role": "reader"}, role="admin").status_code == 409
    r = portal.post("/tokens", {"name": "bob", "role": "root"}, role="admin")
    assert r.status_code == 422 and "role" in r.json()["error"]
    assert portal.client.delete("/api/v1/tokens/alice", headers=portal.auth("admin")).status_code == 204
    assert portal.client.get("/api/v1/whoami", headers=alice).status_code == 401
    assert portal.client.delete("/api/v1/tokens/alice", headers=portal.auth("admin")).status_code == 404
