"""The CLI's side of the audit log: commands that change something are recorded with the local
user and their outcome; reading commands are not; the settings are changed with rehost config."""

from __future__ import annotations

import getpass
from pathlib import Path

from tests.api.portal import make_disk
from tests.cli_helpers import rehost


def test_changing_commands_are_recorded_with_the_local_user(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    rehost(vault, "init")
    disk = make_disk(tmp_path / "disk.raw")
    rehost(vault, "source", "add-image", "web", str(disk))
    rehost(vault, "replicate", "web")
    rehost(vault, "machines")
    rehost(vault, "points", "web")
    assert rehost(vault, "policy", "create", "p", "--rpo-threshold", "-5m", check=False).code != 0
    secret = rehost(vault, "token", "create", "ci", "--role", "reader", "--expires", "30d").out.strip()
    entries = rehost(vault, "audit", "--json").json()
    ops = [e["operation"] for e in reversed(entries)]
    assert ops[:2] == ["rehost init", "rehost source add-image"]
    assert "rehost replicate" in ops and "rehost token create" in ops
    assert "rehost machines" not in ops and "rehost points" not in ops and "rehost audit" not in ops
    me = f"local:{getpass.getuser()}"
    assert {e["actor"] for e in entries} == {me}
    # the commands, and the end of the job `rehost replicate` ran (jobs record their own end)
    assert {e["via"] for e in entries if not e["operation"].startswith("job ")} == {"cli"}
    assert [e["via"] for e in entries if e["operation"] == "job replicate ended"] == ["system"]
    rep = next(e for e in entries if e["operation"] == "rehost replicate")
    assert rep["object"] == "web" and rep["result"] == "ok"
    bad = [e for e in entries if e["operation"] == "rehost policy create"]
    if bad:  # refused before the vault was opened (argument parsing) leaves nothing to record
        assert bad[0]["result"] == "error"
    assert secret.startswith("rht_") and secret not in str(entries)
    # a failed command is recorded as failed, with its message
    assert rehost(vault, "replicate", "nope", check=False).code != 0
    failed = rehost(vault, "audit", "--json", "--limit", "1").json()[0]
    assert (failed["operation"], failed["result"]) == ("rehost replicate", "error")
    assert "nope" in failed["detail"]
    # filters
    assert rehost(vault, "audit", "--json", "--actor", "token:nobody").json() == []
    assert rehost(vault, "audit", "--json", "--since", "2999-01-01").json() == []
    assert len(rehost(vault, "audit", "--json", "--since", "1h").json()) == len(entries) + 1
    out = rehost(vault, "audit").out
    assert "rehost replicate web" in out and me in out
    r = rehost(vault, "audit", "--since", "yesterday", check=False)
    assert r.code == 2 and "give a duration" in r.err


def test_config_roots_and_retention(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    rehost(vault, "init")
    shown = rehost(vault, "config", "show", "--json").json()
    assert [r["path"] for r in shown["allowed_roots"]] == [str(vault.absolute() / "imports"),
                                                            str(vault.absolute() / "targets")]
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    rehost(vault, "config", "allow-root", str(tmp_path / "link"))
    shown = rehost(vault, "config", "show", "--json").json()
    assert shown["allowed_roots"][-1] == {"path": str(tmp_path / "images"), "devices": False,
                                          "default": False}
    r = rehost(vault, "config", "allow-root", str(tmp_path / "missing"), check=False)
    assert r.code == 2 and "is not a folder" in r.err
    r = rehost(vault, "config", "deny-root", str(vault / "imports"), check=False)
    assert r.code == 3 and "cannot be removed" in r.err
    rehost(vault, "config", "deny-root", str(tmp_path / "images"))
    assert len(rehost(vault, "config", "show", "--json").json()["allowed_roots"]) == 2
    r = rehost(vault, "config", "audit-retention", "1h", check=False)
    assert r.code == 2 and "at least 1d" in r.err
    rehost(vault, "config", "audit-retention", "90d")
    assert rehost(vault, "config", "show", "--json").json()["audit_retention"] == "90d"
    ops = [e["operation"] for e in rehost(vault, "audit", "--json").json()]
    assert ops.count("rehost config allow-root") == 2 and "rehost config show" not in ops
