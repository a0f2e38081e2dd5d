"""The README's first command: ``rehost demo`` migrates a machine end to end, from image files
or (``--physical``) from a physical server through a real ``rehost-agent`` process."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import REHOST, REPO, rehost


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*REHOST, "demo", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "200"})


@pytest.mark.slow
@pytest.mark.parametrize("physical", [False, True], ids=["images", "physical"])
def test_demo_migrates_and_boots(tmp_path: Path, physical: bool) -> None:
    workdir = tmp_path / "demo"
    r = _demo("--workdir", str(workdir), *(["--physical"] if physical else []))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [re.match(r"\s+[\d.]+s  (.*)$", ln) for ln in r.stdout.splitlines()]
    summary = {m[1].split("  ")[0]: m[1] for m in rows if m}
    # both booted (the serial line may be interleaved with kernel messages: marker checked apart)
    assert "REHOST-BOOT-OK" in summary.get("Test failover (isolated network)", ""), r.stdout
    assert "REHOST-BOOT-OK" in summary.get("Failover with source shutdown", ""), r.stdout
    assert "marker=v1" not in r.stdout and "marker=v2" in r.stdout, r.stdout + r.stderr
    assert "is migration_completed" in r.stdout
    if not physical:
        _check_report(workdir)
    if physical:
        assert "Agent certificate revoked at completion  yes" in r.stdout
        assert (workdir / "agent" / "powered-off").exists()  # failover shut it down via the agent
        assert not (workdir / "agent" / "tls").exists()  # uninstalled: no key left behind
        assert "read 48.0 KiB" in r.stdout  # the agent's change tracking: only changed blocks
    leftovers = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout
    assert [ln for ln in leftovers.splitlines() if "pgrep" not in ln] == []  # nothing left running


def _check_report(workdir: Path) -> None:
    """The migration report after the demo: where the machine went, from which point, with
    which verdict and how long each step took; its HTML renders in Chromium."""
    name = "web01"
    data = rehost(workdir / "vault", "report", name, "--format", "json").json()
    assert data["state"] == "migration_completed"
    assert data["target"]["name"] and data["target"]["kind"] == "local" and data["target"]["vm"] == name
    assert data["point"]["id"] and data["point"]["id"][:12] in data["point"]["chosen"]
    assert data["verdict"]["ok"] and "REHOST-BOOT-OK" in data["verdict"]["checks"][0]["detail"]
    steps = {s["name"]: s for s in data["failover"]["steps"]}
    assert steps["verify_boot"]["seconds"] > 0 and steps["final_sync"]["state"] == "succeeded"
    assert data["failover"]["seconds"] >= sum(s["seconds"] or 0 for s in data["failover"]["steps"]) - 1
    assert any("purged" in x for x in data["removed"])
    assert any("DNS" in t for t in data["to_do"]) and data["complete"]["state"] == "succeeded"
    md = (workdir / f"report-{name}.md").read_text()
    assert "- Verdict: passed" in md and "| Verify boot | succeeded |" in md
    html = workdir / f"report-{name}.html"
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is missing (scripts/install installs it)")
    shot = workdir / "report.png"
    headless = [chromium, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run([*headless, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'id="verdict"' in dom and "passed" in dom.split('id="verdict"')[1][:200]
    subprocess.run([*headless, f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000  # a page was drawn
    artifacts = REPO / "build" / "web-artifacts" / "demo-report"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "report.png")


@pytest.mark.slow
def test_demo_migrates_to_azure(tmp_path: Path) -> None:
    """``--target azure``: Azurite and the Resource Manager fake stand in for a subscription;
    the VMs boot the uploaded bytes under QEMU and the verdict comes from boot diagnostics."""
    workdir = tmp_path / "demo"
    r = _demo("--workdir", str(workdir), "--target", "azure")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [re.match(r"\s+[\d.]+s  (.*)$", ln) for ln in r.stdout.splitlines()]
    summary = {m[1].split("  ")[0]: m[1] for m in rows if m}
    assert "NOT Azure" in r.stdout
    assert "9 checks passed" in summary["Add and verify the azure target"]
    assert "REHOST-BOOT-OK marker=v2" in summary["Test failover (isolated network)"], r.stdout
    assert "REHOST-BOOT-OK marker=v2" in summary["Failover with source shutdown"], r.stdout
    assert summary["Check that the cleanup left no Azure resource"].endswith("none left")
    assert summary["Check that the replica disks are gone from the storage account"].endswith("none left")
    # the delta cycle wrote only the changed pages into the replica
    delta = summary["Delta replication"]
    changed = re.search(r"changed ([\d.]+ \w+)", delta)
    assert changed and f"replica on the target: {changed[1]} written" in delta, delta
    assert "is migration_completed" in r.stdout and "sig=" not in r.stdout + r.stderr
    leftovers = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout
    assert [ln for ln in leftovers.splitlines() if "pgrep" not in ln] == []  # no QEMU, fake, Azurite


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "data.txt").write_text("keep me")
    r = _demo("--workdir", str(mine))
    assert r.returncode != 0 and "was not made by rehost demo" in r.stderr
    assert (mine / "data.txt").read_text() == "keep me"


def test_demo_kinds_come_from_the_registries(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    r = _demo("--workdir", str(workdir), "--target", "cloud")
    assert r.returncode == 2 and "unknown target kind 'cloud' (kinds: local, azure, memory" in r.stderr
    r = _demo("--workdir", str(workdir), "--source", "floppy")
    assert r.returncode == 2 and "unknown source kind 'floppy'" in r.stderr
    r = _demo("--workdir", str(workdir), "--target", "memory")
    assert r.returncode == 2 and "memory is a test double" in r.stderr
    r = _demo("--workdir", str(workdir), "--source", "qemu")
    assert r.returncode == 2 and "no machine for source kind qemu" in r.stderr
    assert not workdir.exists()  # refused before anything was made
