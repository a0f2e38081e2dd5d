"""``GET /api/v1/machines/{name}/cycles``: the per-cycle history, one entry per cycle."""

from __future__ import annotations

from tests.api.portal import Portal


def test_the_cycles_of_a_machine_since_a_time(portal: Portal) -> None:
    job = portal.post("/machines/web/replicate").json()
    assert portal.wait_job(job["id"])["state"] == "succeeded"
    r = portal.get("/machines/web/cycles?since=24h")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["machine"] == "web"
    first, second = body["cycles"]  # make_vault's first copy, then the job's cycle
    assert first["ok"] and first["changed_bytes"] > 0 and first["point"]
    assert second["point"] == portal.get("/machines/web/points").json()[-1]["id"]
    assert second["seconds"] > 0 and second["error"] == "" and second["consistency"] == "crash-consistent"
    assert portal.get("/machines/web/cycles?since=2999-01-01T00:00").json()["cycles"] == []
    assert portal.get("/machines/web/cycles?since=yesterday").status_code == 400
    assert portal.get("/machines/nope/cycles").status_code == 404
