"""The must-show of recovery plans, on QEMU (TCG): three tiny Linux machines, a "database"
group then two "web" machines in parallel, on the local target's isolated network.

The post-action script sets a value inside the database guest over its network (the plan's
context names where its port 80 is reached). The web machines' HTTP probes ask *their own*
guest to fetch that value from the database guest (``/cgi-bin/fetch`` → 10.0.2.100, the
database's peer address on the web guest's isolated network), so they pass only when the
value went through both guests. A manual action is confirmed through the API while the plan
job (a separate ``rehost`` process) waits for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.api.tokens import create_token
from rehost.jobs.runner import get_job, list_jobs
from rehost.testkit.tinylinux import set_marker, set_mode
from rehost.vault import failover, instant, inventory, plan_jobs, plans, protection, targets, verdicts
from rehost.vault.vault import Vault
from tests.api.portal import portal_for
from tests.cli_helpers import REHOST, rehost

SET_COLOR = """#!/usr/bin/env python3
import json, os, urllib.request
ctx = json.load(open(os.environ["REHOST_PLAN_CONTEXT"]))
db = next(m for m in ctx["machines"] if m["name"] == "db")
host, port = db["endpoints"]["80"]
url = f"http://{host}:{port}/cgi-bin/set?color=blue"
print(urllib.request.urlopen(url, timeout=60).read().decode().strip(), "via", f"{host}:{port}")
"""


def _script(path: Path, body: str) -> str:
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def leave_no_machine(tmp_path: Path) -> Iterator[None]:
    """Whatever the test's end, no test machine keeps running (a failed assert skips the
    test's own cleanup; left over, three TCG guests would slow every later test)."""
    yield
    if not (tmp_path / "vault").exists():
        return
    vault = Vault.open(tmp_path / "vault")
    try:
        target = targets.provider(targets.get_target(vault, "t"))
        for m in ("db", "web1", "web2"):
            placement = target.find(failover.vm_for_test(m))
            if placement is not None:
                target.remove(placement)
            instant.stop_point_servers(vault, failover.vm_for_test(m))
    finally:
        vault.close()


@pytest.mark.slow
def test_three_machine_plan_test_failover_on_the_isolated_network(
        tiny_linux_base: Path, tmp_path: Path, need_qemu: None, leave_no_machine: None) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        targets.add_target(vault, "local", "t", {"path": tmp_path / "target"})
        for name in ("db", "web1", "web2"):
            disk = tmp_path / f"{name}.img"
            shutil.copyfile(tiny_linux_base, disk)
            set_marker(disk, name)
            set_mode(disk, "stay")
            inventory.add_image_source(vault, name, [disk])
            protection.replicate(vault, name)
        token = create_token(vault, "operator-token", "operator")[1]
    finally:
        vault.close()

    v = tmp_path / "vault"
    rehost(v, "probe", "add", "db", "site", "--http", "80", "--expect", "marker=db")
    for web in ("web1", "web2"):
        rehost(v, "probe", "add", web, "db-color", "--http", "80",
               "--path", "/cgi-bin/fetch?http://10.0.2.100/cgi-bin/get?color", "--expect", "blue")
        rehost(v, "probe", "add", web, "http-bytes", "--tcp", "80", "--send", "GET / HTTP/1.0\\r\\n\\r\\n",
               "--expect", f"marker={web}")
    cleaned = tmp_path / "cleaned"
    rehost(v, "plan", "create", "shop")
    rehost(v, "plan", "add", "shop", "db", "--group", "1")
    rehost(v, "plan", "action", "shop", "--group", "1", "--post", _script(tmp_path / "set.py", SET_COLOR),
           "--timeout", "90s")
    rehost(v, "plan", "action", "shop", "--group", "1", "--manual", "check the database by hand")
    rehost(v, "plan", "action", "shop", "--group", "1", "--cleanup",
           _script(tmp_path / "undo.sh", f'#!/bin/sh\necho "undone $REHOST_GROUP" | tee {cleaned}\n'))
    rehost(v, "plan", "add", "shop", "web1", "--group", "2")
    rehost(v, "plan", "add", "shop", "web2", "--group", "2")

    started = time.monotonic()
    proc = subprocess.Popen([*REHOST, "--vault", str(v), "plan", "failover", "shop", "--test", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with portal_for(tmp_path, {"operator": token}) as portal:
            while True:  # the plan job waits for the operator after group 1's machine and script
                assert proc.poll() is None, proc.communicate()
                r = portal.get("/plans/shop/job", role="operator")
                if r.status_code == 200 and r.json()["waiting"]:
                    break
                assert time.monotonic() - started < 600, r.text
                time.sleep(1)
            assert list(r.json()["children"]) == ["db"]
            confirmed = portal.post("/plans/shop/confirm")
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["confirmed"] == "check the database by hand"
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    seconds = time.monotonic() - started

    vault = Vault.open(v)
    try:
        job = get_job(vault, json.loads(out)["id"])
        assert job.state == "succeeded", job.error
        steps = {s.name: s for s in job.steps}
        assert "stored color via" in steps["group_1"].detail and "via 127.0.0.1:" in steps["group_1"].detail
        assert "confirmed: check the database by hand" in steps["group_1"].detail
        children = {m: get_job(vault, j) for m, j in job.outputs["children"].items()}
        db, web1, web2 = children["db"], children["web1"], children["web2"]
        # groups in order, the web machines side by side
        assert steps["group_1"].ended_at <= steps["group_2"].started_at
        assert db.ended_at <= web1.started_at and db.ended_at <= web2.started_at
        assert max(web1.started_at, web2.started_at) < min(web1.ended_at, web2.ended_at)
        verdict = job.outputs["verdict"]
        assert verdict["ok"], verdict
        assert sorted((c["machine"], c["name"]) for c in verdict["checks"]) == [
            ("db", "boot"), ("db", "site"), ("web1", "boot"), ("web1", "db-color"), ("web1", "http-bytes"),
            ("web2", "boot"), ("web2", "db-color"), ("web2", "http-bytes")]
        assert all(c["ok"] for c in verdict["checks"])
        assert [p["name"] for p in web1.params["peers"]] == ["db"]
        print(f"\nthree-machine plan test failover in {seconds:.1f}s")
    finally:
        vault.close()

    r = rehost(v, "plan", "failover", "shop", "--cleanup")
    assert "undone 1" in r.out and cleaned.read_text() == "undone 1\n"
    vault = Vault.open(v)
    try:
        target = targets.provider(targets.get_target(vault, "t"))
        for m in ("db", "web1", "web2"):
            assert target.find(failover.vm_for_test(m)) is None
            assert inventory.get_machine(vault, m).state == "protected"
        assert not [j for j in list_jobs(vault) if j.state == "running"]
        assert verdicts.list_checks(vault, "db")[0].name == "site"
        assert plans.show(vault, "shop").machines == ["db", "web1", "web2"]
        assert plan_jobs.running_plan_job(vault, "shop") is None
    finally:
        vault.close()
