"""Jobs through the API: list, detail with steps, cancel where allowed; and the overview."""

from __future__ import annotations

from rehost.vault import failover
from tests.api.portal import Portal


def test_jobs_list_detail_and_prefix(portal: Portal) -> None:
    job_id = portal.post("/machines/web/replicate").json()["id"]
    portal.wait_job(job_id)
    jobs = portal.get("/jobs").json()
    assert [j["id"] for j in jobs] == [job_id]
    assert portal.get("/jobs", params={"machine": "web"}).json() == jobs
    r = portal.get("/jobs", params={"machine": "nope"})
    assert r.status_code == 404
    detail = portal.get(f"/jobs/{job_id[:6]}").json()  # a prefix finds it, as on the CLI
    assert detail["id"] == job_id and detail["state"] == "succeeded" and not detail["cancellable"]
    assert [s["name"] for s in detail["steps"]] == ["replicate"]
    r = portal.get("/jobs/nope")
    assert r.status_code == 404 and r.json() == {"error": "no job 'nope' (see: rehost jobs)"}
    assert portal.get("/jobs", params={"limit": 0}).status_code == 422


def test_cancel_where_allowed(portal: Portal) -> None:
    vault = portal.open_vault()
    try:  # a job created but not run (as after a crash before its first step)
        job = failover.start_job(vault, "test-failover", "web", target=None)
    finally:
        vault.close()
    assert portal.get(f"/jobs/{job.id}").json()["cancellable"] is True
    r = portal.post("/machines/web/test-failover", {})
    assert r.status_code == 409 and "has a test-failover job running" in r.json()["error"]
    assert portal.post(f"/jobs/{job.id}/cancel", role="reader").status_code == 403
    r = portal.post(f"/jobs/{job.id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = portal.post(f"/jobs/{job.id}/cancel")
    assert r.status_code == 409 and "has already cancelled" in r.json()["error"]


def test_overview_counts_items_and_raises_alerts(portal: Portal) -> None:
    o = portal.get("/overview").json()
    assert o["items"] == 1 and o["by_health"] == {"healthy": 1} and o["by_state"] == {"protected": 1}
    assert o["alerts"] == [] and o["worst_rpo_seconds"] is not None
    portal.post("/policies", {"name": "gold"}, role="admin")
    portal.post("/policies/gold/attach", {"machine": "web"}, role="admin")
    o = portal.get("/overview").json()  # a policy but nothing replicating it
    assert any(a["subject"] == "scheduler" and "rehost serve" in a["message"] for a in o["alerts"])


def test_openapi_is_published_with_error_shapes(portal: Portal) -> None:
    doc = portal.client.get("/openapi.json").json()
    op = doc["paths"]["/api/v1/machines/{name}/failover"]["post"]
    assert {"202", "401", "403", "404", "409", "422"} <= set(op["responses"])
    assert op["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_an_internal_error_goes_out_without_its_traceback(portal: Portal) -> None:
    """The runner keeps tracebacks of internal errors in the vault; the API sends the line."""
    from sqlalchemy import select

    from rehost.jobs.models import JobRow, StepRow

    job_id = portal.post("/machines/web/replicate").json()["id"]
    portal.wait_job(job_id)
    trace = 'ZeroDivisionError: division by zero\nTraceback (most recent call last):\n  File "/x.py", line 1'
    vault = portal.open_vault()
    try:
        with vault.session() as s, s.begin():
            s.get(JobRow, job_id).error = f"Replicate: {trace}"  # type: ignore[union-attr]
            s.scalars(select(StepRow).where(StepRow.job_id == job_id)).one().detail = trace
    finally:
        vault.close()
    for job in (portal.get(f"/jobs/{job_id}").json(), portal.get("/jobs").json()[0]):
        assert job["error"] == "Replicate: ZeroDivisionError: division by zero"
        assert job["steps"][0]["detail"] == "ZeroDivisionError: division by zero"
    portal.client.cookies.set("rehost_token", portal.tokens["reader"])
    assert "x.py" not in portal.client.get(f"/ui/jobs/{job_id}").text
