"""Probes and verdicts through the API, on the memory target (a declared test double whose
``expose`` hands a guest's port to a server the test runs on 127.0.0.1): probe CRUD and who
may do it, a test failover whose HTTP probe passes and one whose TCP probe fails because
nothing answers, complete refused then forced with the reason recorded, and a plan's real
failover and complete."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rehost.vault import plans
from tests.api.plan_world import make_plan_vault
from tests.api.portal import Portal, portal_for
from tests.api.probe_world import PAGE, expose, http_service, silent_service

NO_BYTE = "accepted the connection but no byte came back"


def _delete(portal: Portal, path: str, role: str = "operator") -> httpx.Response:
    return portal.client.delete(f"/api/v1{path}", headers=portal.auth(role))


def _checks(job: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {c["name"]: (c["ok"], c["detail"]) for c in job["verdict"]["checks"]}


def test_probe_crud_and_roles(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, ("web",))
    with portal_for(tmp_path, tokens) as portal:
        assert portal.get("/machines/web/probes").json() == []
        assert portal.get("/machines/nope/probes").status_code == 404

        http_probe = {"name": "site", "kind": "http", "port": 80, "path": "/health", "expect": "hello"}
        assert portal.post("/machines/web/probes", http_probe, role="reader").status_code == 403
        r = portal.post("/machines/web/probes", http_probe)
        assert r.status_code == 201, r.text
        assert r.json() == {"name": "site", "kind": "http", "port": 80, "send": "", "expect": "hello",
                            "path": "/health", "status": 200, "script": "", "timeout_s": 120.0,
                            "description": "HTTP GET :80/health → 200, body contains 'hello'"}
        r = portal.post("/machines/web/probes", http_probe)
        assert r.status_code == 409 and "already has a check named 'site'" in r.json()["error"]

        # the services' validation, with its message
        for body, code, says in [
            ({"name": "ssh", "kind": "tcp"}, 400, "port 0 is not a TCP port"),
            ({"name": "x", "kind": "http", "port": 80, "path": "health"}, 400, "must start with /"),
            ({"name": "x", "kind": "http", "port": 80, "status": 42}, 400, "42 is not an HTTP status"),
            ({"name": "x y", "kind": "tcp", "port": 22}, 400, "invalid check name"),
            ({"name": "x", "kind": "tcp", "port": 22, "timeout_s": 0}, 400, "not within 0-3600"),
            ({"name": "x", "kind": "tcp", "port": 22, "script": "/bin/true"}, 400, "takes no script"),
            ({"name": "x", "kind": "udp", "port": 53}, 422, "kind"),
            ({"name": "x", "kind": "tcp", "port": 70000}, 422, "port"),
            ({"name": "x", "kind": "tcp", "port": 22, "colour": "red"}, 422, "colour"),
        ]:
            r = portal.post("/machines/web/probes", body)
            assert r.status_code == code and says in r.json()["error"], (body, r.text)
        r = portal.post("/machines/nope/probes", {"name": "x", "kind": "tcp", "port": 22})
        assert r.status_code == 404

        # a script runs on the rehost server: admins only, an existing file, its resolved path kept
        script = tmp_path / "check.sh"
        script.write_text("#!/bin/sh\necho fine\n")
        script.chmod(0o755)
        (tmp_path / "link.sh").symlink_to(script)
        probe = {"name": "app", "kind": "script", "script": str(tmp_path / "link.sh")}
        r = portal.post("/machines/web/probes", probe)
        assert r.status_code == 403 and "needs admin" in r.json()["error"]
        for path, says in [("check.sh", "absolute path"), (str(tmp_path / "gone.sh"), "no such file")]:
            r = portal.post("/machines/web/probes", {**probe, "script": path}, role="admin")
            assert r.status_code == 400 and says in r.json()["error"], r.text
        r = portal.post("/machines/web/probes", probe, role="admin")
        assert r.status_code == 201 and r.json()["script"] == str(script.resolve())

        assert [p["name"] for p in portal.get("/machines/web/probes").json()] == ["site", "app"]
        assert _delete(portal, "/machines/web/probes/site", role="reader").status_code == 403
        assert _delete(portal, "/machines/web/probes/site").status_code == 204
        r = _delete(portal, "/machines/web/probes/site")
        assert r.status_code == 404 and "no check named 'site' (checks: app)" in r.json()["error"]
        assert [p["name"] for p in portal.get("/machines/web/probes").json()] == ["app"]


def test_test_failover_verdicts_pass_and_fail(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, ("web",))
    with portal_for(tmp_path, tokens) as portal, http_service() as site, silent_service() as silent:
        expose(portal.vault, "web", 80, site)
        expose(portal.vault, "web", 22, silent)
        assert portal.post("/machines/web/probes", {"name": "site", "kind": "http", "port": 80,
                                                    "path": "/health", "expect": "hello"}).status_code == 201
        r = portal.post("/machines/web/test-failover", {})
        assert r.status_code == 202, r.text
        job = portal.wait_job(r.json()["id"])
        assert job["state"] == "succeeded", job
        assert job["verdict"]["ok"] and job["forced"] is None
        ok, detail = _checks(job)["site"]
        assert ok and f"GET /health → 200, {len(PAGE)} bytes, contains 'hello'" == detail
        assert _checks(job)["boot"][0]
        assert portal.wait_job(portal.post("/machines/web/test-cleanup").json()["id"])["state"] == "succeeded"

        # a port that opens but sends nothing back is not a service
        assert portal.post("/machines/web/probes", {"name": "ssh", "kind": "tcp", "port": 22,
                                                    "timeout_s": 1.5}).status_code == 201
        job = portal.wait_job(portal.post("/machines/web/test-failover", {}).json()["id"])
        assert job["state"] == "failed" and "verdict failed" in job["error"]
        assert not job["verdict"]["ok"]
        checks = _checks(job)
        assert checks["site"][0] and not checks["ssh"][0]
        assert f"127.0.0.1:{silent} {NO_BYTE}" in checks["ssh"][1]
        assert portal.get(f"/jobs/{job['id']}").json()["verdict"] == job["verdict"]


def test_complete_is_refused_then_forced_with_the_reason_recorded(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, ("web",))
    with portal_for(tmp_path, tokens) as portal, silent_service() as silent:
        expose(portal.vault, "web", 22, silent)
        portal.post("/machines/web/probes", {"name": "ssh", "kind": "tcp", "port": 22, "timeout_s": 1.5})
        r = portal.post("/machines/web/failover", {"point": "latest-processed"})
        assert r.status_code == 202, r.text
        job = portal.wait_job(r.json()["id"])
        assert job["state"] == "failed" and not job["verdict"]["ok"], job
        assert portal.get("/machines/web").json()["state"] == "failed_over"  # placed, not trusted

        r = portal.post("/machines/web/complete")
        assert r.status_code == 409
        error = r.json()["error"]
        assert f"the verdict of its last failover (job {job['id']}) failed" in error and NO_BYTE in error
        for body in ({"force": True}, {"force": True, "reason": "  "}, {"reason": "why not"}):
            assert portal.post("/machines/web/complete", body).status_code == 422, body
        assert portal.post("/machines/web/complete", {"force": True, "reason": "x"},
                           role="reader").status_code == 403

        r = portal.post("/machines/web/complete", {"force": True, "reason": "ssh checked by hand"})
        assert r.status_code == 202, r.text
        assert r.json()["forced"]["reason"] == "ssh checked by hand"
        done = portal.wait_job(r.json()["id"])
        assert done["state"] == "succeeded", done
        why = error.split("cannot complete web: ")[1].split(". Fix it")[0]
        assert done["forced"] == {"reason": "ssh checked by hand", "why": why}
        machine = portal.get("/machines/web").json()
        assert machine["state"] == "migration_completed" and "ssh checked by hand" in machine["state_reason"]


def test_plan_real_failover_and_complete(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path)
    with portal_for(tmp_path, tokens) as portal, silent_service() as silent:
        vault = portal.open_vault()
        try:
            plans.create(vault, "shop")
            plans.add_machine(vault, "shop", "db", 1)
            plans.add_machine(vault, "shop", "web", 1)
        finally:
            vault.close()
        expose(portal.vault, "web", 22, silent)
        portal.post("/machines/web/probes", {"name": "ssh", "kind": "tcp", "port": 22, "timeout_s": 1.5})

        for body in ({}, {"test": True, "shutdown_source": False}, {"cleanup": True, "shutdown_source": True},
                     {"cleanup": True, "at": "2026-01-01T00:00:00"}, {"shutdown_source": False, "at": "now"}):
            r = portal.post("/plans/shop/failover", body)
            assert r.status_code == 422, (body, r.text)
        r = portal.post("/plans/shop/failover", {"test": True, "at": "not a time"})
        assert r.status_code == 400, r.text

        # a test at a time: the newest points at or before it
        at = datetime.now(UTC).isoformat()
        r = portal.post("/plans/shop/failover", {"test": True, "at": at})
        assert r.status_code == 202, r.text
        assert portal.wait_job(r.json()["id"])["state"] == "failed"  # web's ssh probe fails
        job = portal.get("/plans/shop/job").json()
        assert job["steps"][0]["name"] == "points" and job["steps"][0]["state"] == "succeeded"
        assert portal.wait_job(portal.post("/plans/shop/failover", {"cleanup": True}).json()["id"])[
            "state"] == "succeeded"

        r = portal.post("/plans/shop/failover", {"shutdown_source": False})
        assert r.status_code == 202, r.text
        assert r.json()["kind"] == "plan-failover"
        portal.wait_job(r.json()["id"])
        job = portal.get("/plans/shop/job").json()
        assert {m: c["kind"] for m, c in job["children"].items()} == {"db": "failover", "web": "failover"}
        assert job["children"]["db"]["verdict"]["ok"] and not job["children"]["web"]["verdict"]["ok"]
        assert {m["name"]: m["state"] for m in portal.get("/machines").json()} == {
            "db": "failed_over", "web": "failed_over"}

        r = portal.post("/plans/shop/complete", {})
        assert r.status_code == 409
        error = r.json()["error"]
        assert error.startswith("cannot complete plan shop: web: the verdict of its last failover")
        assert NO_BYTE in error and "db:" not in error
        assert portal.post("/plans/shop/complete", {"force": True}).status_code == 422
        assert portal.post("/plans/nope/complete", {}).status_code == 404

        r = portal.post("/plans/shop/complete", {"force": True, "reason": "web is a cold standby"})
        assert r.status_code == 202, r.text
        assert r.json()["kind"] == "plan-complete"
        done = portal.wait_job(r.json()["id"])
        assert done["state"] == "succeeded", done
        assert done["forced"]["reason"] == "web is a cold standby"
        assert done["forced"]["why"].startswith("web: the verdict of its last failover")
        assert {m["name"]: m["state"] for m in portal.get("/machines").json()} == {
            "db": "migration_completed", "web": "migration_completed"}
        web_job = portal.get("/plans/shop/job").json()["children"]["web"]["job"]
        assert portal.get(f"/jobs/{web_job}").json()["forced"]["reason"] == "web is a cold standby"

        # the plan page's buttons: for operators only
        c = portal.client
        for role, shown in (("operator", True), ("reader", False)):
            c.cookies.set("rehost_token", portal.tokens[role])
            try:
                page = c.get("/ui/plans/shop").text
            finally:
                c.cookies.clear()
            assert ('id="plan-failover"' in page and 'id="plan-complete"' in page
                    and "Fail over plan shop for real?" in page) is shown, role
            assert "web is a cold standby" not in page  # the reason is on the job's page
