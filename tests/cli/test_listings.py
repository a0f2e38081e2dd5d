"""The CLI's plain output: ``rehost`` alone says the lifecycle in five lines, and every listing
fits a 100-column terminal (long values are cut or wrapped, never the columns)."""

from __future__ import annotations

from pathlib import Path

from rehost.api.tokens import create_token
from rehost.guest.probes import Check
from rehost.jobs.runner import run_job
from rehost.vault import failover, plans, policies, verdicts
from tests.cli_helpers import REHOST, rehost
from tests.targets.helpers import world

LISTINGS = [("machines",), ("points", "web"), ("jobs",), ("job", "JOB"), ("target", "list"),
            ("policy", "list"), ("token", "list"), ("probe", "list", "web"), ("plan", "list"),
            ("plan", "show", "shop"), ("audit",), ("source", "kinds"), ("target", "kinds"),
            ("config", "show")]


def test_rehost_alone_prints_the_lifecycle() -> None:
    import subprocess

    out = subprocess.run(REHOST, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 5 and lines[0].startswith("1. rehost init") and "rehost --help" in lines[4]
    assert max(len(ln) for ln in lines) <= 100


def test_every_listing_fits_100_columns(tmp_path: Path) -> None:
    with world(tmp_path, "memory", markers=("first", "second")) as w:
        policies.create_policy(w.vault, "gold-with-a-long-name", bandwidth="100MB/s",
                               bandwidth_schedule=["mon-fri 08:00-18:00=10MB/s"])
        policies.attach(w.vault, "web", "gold-with-a-long-name")
        create_token(w.vault, "monitoring-of-the-datacenter", "reader")
        verdicts.add_check(w.vault, "web", Check("site", "http", port=80, expect="REHOST-WEB marker=shop"))
        plans.create(w.vault, "shop")
        plans.add_machine(w.vault, "shop", "web", 1)
        job = run_job(w.vault, failover.start_job(w.vault, "test-failover", "web").id)
    env = {"COLUMNS": "100"}
    too_long = {}
    for args in LISTINGS:
        args = tuple(job.id if a == "JOB" else a for a in args)
        r = rehost(tmp_path / "vault", *args, env=env)
        assert r.out.strip(), args
        lines = [ln for ln in r.out.splitlines() if len(ln) > 100]
        if lines:
            too_long[" ".join(args)] = lines
    assert not too_long, too_long
