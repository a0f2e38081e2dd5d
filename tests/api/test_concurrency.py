"""Many machines at once through the API: different machines replicate side by side; one
machine refuses a second operation with the reason (issue 10)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from rehost.jobs import leases
from rehost.jobs.runner import run_job
from rehost.vault import cycles, inventory
from tests.api.portal import Portal
from tests.cli_helpers import rehost

MiB = 1 << 20


def _random_disk(path: Path, size: int) -> Path:
    """Incompressible data, so a cycle takes long enough for two to overlap."""
    with open(path, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    return path


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_two_machines_replicate_at_the_same_time(portal: Portal, tmp_path: Path) -> None:
    for name in ("db", "app"):
        disk = _random_disk(tmp_path / f"{name}.raw", 48 * MiB)
        r = portal.post("/sources/image", {"name": name, "paths": [str(disk)]}, role="admin")
        assert r.status_code == 201, r.text
    first = portal.post("/machines/db/replicate")
    second = portal.post("/machines/app/replicate")
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    a, b = portal.wait_job(first.json()["id"]), portal.wait_job(second.json()["id"])
    assert a["state"] == b["state"] == "succeeded", (a, b)
    # they ran side by side: each started before the other ended
    assert _when(a["started_at"]) < _when(b["ended_at"]), (a, b)
    assert _when(b["started_at"]) < _when(a["ended_at"]), (a, b)
    for name in ("db", "app"):
        assert portal.get(f"/machines/{name}").json()["points"] == 1
    report = rehost(portal.vault, "check", "--read-data", "--json").json()
    assert report["ok"], report


def test_a_second_operation_on_one_machine_is_refused_with_the_reason(portal: Portal) -> None:
    """A replicate job of the machine is queued, not yet run (made in the vault, so how fast a
    cycle is cannot let it end first): the API refuses a test failover naming that job, and
    starts nothing."""
    vault = portal.open_vault()
    try:
        job = cycles.start_replicate_job(vault, "web")
        again = portal.post("/machines/web/test-failover", {"target": "here"})
        assert again.status_code == 409, again.text
        assert f"web has a replicate job running ({job.id})" in again.json()["error"]
        assert run_job(vault, job.id).state == "succeeded"
    finally:
        vault.close()
    assert portal.get("/machines/web").json()["points"] == 2  # the first, and this one; nothing else ran


def test_another_process_holding_the_machine_makes_replicate_say_who(portal: Portal) -> None:
    """The lease is in the database: a CLI in another process sees it and names it."""
    vault = portal.open_vault()
    try:
        machine = inventory.get_machine(vault, "web")
        with leases.machine(vault, machine.id, "web", "failover", job_id="0123456789ab"):
            r = rehost(portal.vault, "replicate", "web", check=False)
            assert r.code != 0
            assert "web is busy: failover (job 0123456789ab) has been running for" in r.err, r.err
        rehost(portal.vault, "replicate", "web")  # released: it goes on
    finally:
        vault.close()
