"""The audit log's core: secrets removed, retention, the actor of the code running now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rehost.jobs.runner import create_job
from rehost.vault import audit, failover
from rehost.vault.audit import Actor
from rehost.vault.vault import Vault

_ = failover  # registers the job plans


def test_redact_removes_secrets_by_key_and_by_value() -> None:
    got = audit.redact({
        "name": "web", "password": "hunter2", "Client_Secret": "x", "sas_url": "https://a/b?sig=1",
        "nested": [{"passphrase": "p"}, "Bearer rht_abcDEF123",
                   "DefaultEndpointsProtocol=https;AccountKey=a2V5;"],
        "url": "https://acct.blob.core.windows.net/c/d?sv=2023&se=x&sig=QUJD%3D&sp=r",
        "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        "empty_password": "", "count": 3, "flag": True,
    })
    assert got["name"] == "web" and got["count"] == 3 and got["flag"] is True
    assert got["password"] == got["Client_Secret"] == got["sas_url"] == "***"
    assert got["empty_password"] == ""  # nothing to hide, and the entry says none was given
    assert got["nested"][0] == {"passphrase": "***"}
    assert got["nested"][1] == "Bearer ***" and "a2V5" not in got["nested"][2]
    assert "QUJD" not in got["url"] and "sp=r" in got["url"]
    assert "MIIE" not in got["pem"]


def test_retention_deletes_old_entries_only(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        audit.record(vault, "old")
        audit.record(vault, "new")
        assert audit.apply_retention(vault) == 0
        later = datetime.now(UTC) + timedelta(days=400, hours=1)
        audit.set_retention(vault, "30d")
        assert audit.apply_retention(vault, now=later) == 2
        assert audit.entries(vault) == []
    finally:
        vault.close()


def test_jobs_carry_the_actor_that_asked_for_them(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        from rehost.vault import inventory
        from tests.api.portal import make_disk

        inventory.add_image_source(vault, "m", [make_disk(tmp_path / "d.raw")])
        m = inventory.get_machine(vault, "m")
        with audit.acting_as(Actor("token:alice", role="operator", via="api")):
            job = create_job(vault, "replicate", m.id, "m", {})
        assert job.actor == "token:alice"
        assert create_job(vault, "replicate", m.id, "m", {}).actor.startswith("local:")
    finally:
        vault.close()
