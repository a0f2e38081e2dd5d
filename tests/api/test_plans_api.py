"""Plans through the API: read, and confirm the manual action a plan job waits for
(operators only; 409 when nothing waits)."""

from __future__ import annotations

from sqlalchemy import update

from rehost.jobs.models import JobRow
from rehost.vault import plan_jobs
from rehost.vault.vault import Vault
from tests.api.portal import Portal
from tests.cli_helpers import rehost


def test_read_and_confirm(portal: Portal) -> None:
    rehost(portal.vault, "plan", "create", "shop")
    rehost(portal.vault, "plan", "add", "shop", "web", "--group", "1")
    rehost(portal.vault, "plan", "action", "shop", "--group", "1", "--manual", "open the firewall")
    shop = {"name": "shop", "groups": [{"group": 1, "machines": ["web"], "actions": [
        {"group": 1, "kind": "manual", "text": "open the firewall"}]}]}
    assert portal.get("/plans/shop").json() == shop
    assert portal.get("/plans").json() == [shop]
    assert portal.get("/plans/nope").status_code == 404

    r = portal.post("/plans/shop/confirm")
    assert r.status_code == 409 and "no job waiting for a confirmation" in r.json()["error"]
    # a plan job as it is while its step waits (the waiting itself: tests/vault/test_plan_jobs.py)
    vault = Vault.open(portal.vault)
    try:
        job = plan_jobs.start(vault, plan_jobs.TEST_FAILOVER, "shop")
        with vault.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job.id).values(
                state="running", outputs={"waiting": {"key": "1:0", "text": "open the firewall"}}))
        assert portal.post("/plans/shop/confirm", role="reader").status_code == 403
        r = portal.post("/plans/shop/confirm")
        assert r.status_code == 200 and r.json() == {"plan": "shop", "confirmed": "open the firewall"}
        with vault.session() as s:
            outputs = s.get(JobRow, job.id).outputs  # type: ignore[union-attr]
        assert outputs == {"confirmed": ["1:0"]}
        assert portal.post("/plans/shop/confirm").status_code == 409
    finally:
        vault.close()
