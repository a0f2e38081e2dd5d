"""The migration report from the vault's records, before and after completion (the memory
target stands in for a boot; the demo's test checks a real one and the HTML in Chromium)."""

from __future__ import annotations

from pathlib import Path

from rehost.jobs.runner import run_job
from rehost.vault import failover, plans, report
from tests.cli_helpers import rehost
from tests.targets.helpers import world


def test_the_report_follows_the_migration(tmp_path: Path) -> None:
    with world(tmp_path, "memory", markers=("first",)) as w:
        before = report.machine_report(w.vault, "web")
        assert before["failover"] is None and before["target"]["name"] is None
        assert before["to_do"] == ["fail web over first: rehost failover web [--shutdown-source]"]

        assert run_job(w.vault, failover.start_job(w.vault, "test-failover", "web").id).state == "succeeded"
        assert run_job(w.vault, failover.start_job(w.vault, "test-cleanup", "web").id).state == "succeeded"
        fo = run_job(w.vault, failover.start_job(w.vault, "failover", "web").id)
        assert fo.state == "succeeded"
        mid = report.machine_report(w.vault, "web")
        assert (mid["target"]["name"], mid["target"]["kind"], mid["target"]["vm"]) == ("t", "memory", "web")
        assert mid["point"]["id"] == fo.outputs["point"] and mid["verdict"]["ok"]
        assert mid["test_failover"]["state"] == "succeeded" and mid["failover"]["id"] == fo.id
        assert [s["name"] for s in mid["failover"]["steps"]] == [s.name for s in fo.steps]
        assert all(s["seconds"] is not None for s in mid["failover"]["steps"] if s["state"] == "succeeded")
        assert mid["removed"] == [] and mid["to_do"][0] == "complete the migration once the application is " \
            "accepted: rehost complete web"
        assert mid["disks"] == [{"index": 0, "size": w.image.stat().st_size, "format": "raw"}]

        assert run_job(w.vault, failover.start_job(w.vault, "complete", "web").id).state == "succeeded"
        done = report.machine_report(w.vault, "web")
        assert done["state"] == "migration_completed" and done["complete"]["state"] == "succeeded"
        assert any(r.startswith("Purge replica data: ") and "purged" in r for r in done["removed"])
        assert done["point"] == mid["point"]  # kept in the job: the point itself is purged
        assert not any(t.startswith("complete the migration") for t in done["to_do"])
        assert any("archive or delete the exported images" in t for t in done["to_do"])

        plans.create(w.vault, "shop")
        plans.add_machine(w.vault, "shop", "web", 1)
    md = rehost(tmp_path / "vault", "report", "web").out
    assert md.startswith("# Migration report: web") and "- Target: t (memory), machine web" in md
    assert "### Failover: job " in md and "| Verify boot | succeeded |" in md
    html = rehost(tmp_path / "vault", "report", "shop", "--format", "html").out
    assert "<h1>Migration report: plan shop</h1>" in html and 'id="machine-web"' in html
    out = tmp_path / "r.html"
    rehost(tmp_path / "vault", "report", "web", "--format", "html", "-o", str(out))
    assert out.read_text().startswith("<!doctype html>")
    r = rehost(tmp_path / "vault", "report", "web", "-o", str(out), check=False)
    assert r.code == 2 and "never overwrites" in r.err
    r = rehost(tmp_path / "vault", "report", "nothing", check=False)
    assert r.code == 3 and "no machine or plan named 'nothing'" in r.err
    ops = [e["operation"] for e in rehost(tmp_path / "vault", "audit", "--json").json()]
    assert "rehost report" not in ops  # reading is not audited
