"""The migration report through the API (JSON) and the dashboard (printable HTML)."""

from __future__ import annotations

from pathlib import Path

from tests.api.plan_world import make_plan_vault
from tests.api.portal import portal_for


def test_report_json_and_page(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, machines=("db",))
    with portal_for(tmp_path, tokens) as p:
        job = p.post("/machines/db/failover", {}).json()["id"]
        assert p.wait_job(job)["state"] == "succeeded"
        r = p.get("/machines/db/report")
        assert r.status_code == 200
        data = r.json()
        assert data["failover"]["id"] == job and data["failover"]["actor"] == "token:operator-token"
        assert data["target"]["name"] == "t" and data["verdict"]["ok"]
        assert p.get("/machines/nope/report").status_code == 404
        page = p.client.get("/ui/report/machines/db", headers=p.auth("reader"))
        assert page.status_code == 200 and "<h1>Migration report: db</h1>" in page.text
        assert f"job <code>{job}</code>" in page.text
        item = p.client.get("/ui/items/db", headers=p.auth("reader")).text
        assert 'href="/ui/report/machines/db"' in item
        # the memory target's guests need nothing: its readiness is known without an inspection
        assert 'id="readiness"' in item and "for target t" in item
        anonymous = p.client.get("/ui/report/machines/db", follow_redirects=False)
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
        assert p.get("/plans/nope/report").status_code == 404
