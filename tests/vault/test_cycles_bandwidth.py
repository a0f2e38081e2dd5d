"""A policy's bandwidth caps a cycle started by hand (``rehost replicate``, the API, enable)
as it caps the scheduler's: the first full copy above all."""

from __future__ import annotations

from pathlib import Path

from rehost.vault import inventory, policies
from rehost.vault.cycles import start_replicate_job
from rehost.vault.vault import Vault


def test_a_job_started_by_hand_takes_the_policy_bandwidth(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        policies.create_policy(vault, "slow", bandwidth="5MB/s")
        for name in ("free", "capped", "own"):
            disk = tmp_path / f"{name}.raw"
            disk.write_bytes(b"\0" * 65536)
            inventory.add_image_source(vault, name, [disk])
        policies.attach(vault, "capped", "slow")
        policies.attach(vault, "own", "slow")
        assert "bandwidth_bps" not in start_replicate_job(vault, "free").params  # no policy: unlimited
        assert start_replicate_job(vault, "capped").params["bandwidth_bps"] == 5_000_000
        # the caller's own limit wins (the scheduler passes the one its windows say)
        assert start_replicate_job(vault, "own", bandwidth_bps=1000).params["bandwidth_bps"] == 1000
    finally:
        vault.close()
