"""Target kinds from the registry: ``rehost target add KIND``, its API twin, and network maps
checked against the networks a target offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.targets import registry
from tests.api.portal import make_disk, make_vault, portal_for
from tests.cli_helpers import rehost


def test_configs_refuse_what_they_cannot_use(tmp_path: Path) -> None:
    local = registry.get("local")
    with pytest.raises(UsageError, match="needs --path"):
        local.make_config({})
    with pytest.raises(UsageError, match="tcg or kvm"):
        local.make_config({"path": str(tmp_path), "accel": "xen"})
    with pytest.raises(UsageError, match="has no option 'size'"):
        local.make_config({"path": str(tmp_path), "size": 3})
    with pytest.raises(UsageError, match="--memory-mib must be int"):
        local.make_config({"path": str(tmp_path), "memory_mib": "lots"})
    assert local.make_config({"path": str(tmp_path), "memory_mib": "512"}).memory_mib == 512
    with pytest.raises(UsageError, match=r"unknown target kind 'cloud' \(kinds: local, azure, memory"):
        registry.get("cloud")


def test_target_add_kind_from_the_cli(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    rehost(vault, "init")
    r = rehost(vault, "target", "add", "memory", "--help")
    assert "TEST DOUBLE" in r.out and "--path" in r.out
    rehost(vault, "target", "add", "memory", "double", "--path", str(tmp_path / "double"))
    rehost(vault, "target", "add", "local", "here", "--path", str(tmp_path / "here"), "--memory-mib", "128")
    rehost(vault, "target", "add-local", "old-spelling", "--path", str(tmp_path / "old"))
    listed = {t["name"]: t for t in rehost(vault, "target", "list", "--json").json()}
    assert listed["double"]["kind"] == "memory" and listed["here"]["settings"]["memory_mib"] == 128
    assert listed["old-spelling"]["settings"]["accel"] == "tcg"  # the config's default
    assert listed["double"]["networks"] == ["production", "isolated"]
    assert listed["here"]["networks"] == ["production", "isolated", "none"]
    assert (tmp_path / "double").is_dir() and (tmp_path / "here").is_dir()
    bad = rehost(vault, "target", "add", "local", "x", "--path", str(tmp_path / "x"), "--accel", "xen",
                 check=False)
    assert bad.code == 2 and "tcg or kvm" in bad.err
    kinds = {k["kind"]: k for k in rehost(vault, "target", "kinds", "--json").json()}
    assert kinds["memory"]["test_double"] and not kinds["local"]["test_double"]
    assert kinds["local"]["capabilities"]["boots_from_nbd"]
    assert kinds["memory"]["capabilities"]["stages_disks"]

    # the network map names the chosen target's networks, not a fixed list
    rehost(vault, "source", "add-image", "web", str(make_disk(tmp_path / "web.raw")))
    r = rehost(vault, "replicate", "web", "--target", "double", "--network-map", "default=none", check=False)
    assert r.code != 0 and "'none' does not exist on target double (production, isolated)" in r.err
    rehost(vault, "replicate", "web", "--target", "here", "--network-map", "default=none")


def test_target_add_kind_through_the_api(tmp_path: Path) -> None:
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"), replicate=False)
    with portal_for(tmp_path, tokens) as p:
        kinds = {k["kind"]: k for k in p.get("/targets/kinds").json()}
        assert {o["name"] for o in kinds["local"]["options"]} >= {"path", "accel", "memory_mib"}
        body = {"kind": "memory", "name": "double", "config": {"path": str(tmp_path / "double")}}
        assert p.post("/targets", body, role="operator").status_code == 403  # admins add targets
        r = p.post("/targets", body, role="admin")
        assert r.status_code == 201, r.text
        assert r.json()["kind"] == "memory"
        r = p.post("/targets", {**body, "name": "d2", "config": {"path": "x", "colour": "red"}}, role="admin")
        assert r.status_code == 400 and "no option 'colour'" in r.text
        assert [t["name"] for t in p.get("/targets").json()] == ["double", "here"]


def test_kinds_are_listed_in_the_builtin_order_whatever_was_imported_first() -> None:
    """The dashboard's default target kind is the first listed: it must not depend on which
    test (or code path) imported the Azure target module before the registry was asked."""
    import rehost.targets.azure.target
    import rehost.targets.memory  # noqa: F401
    from rehost.targets import registry

    assert [p.kind for p in registry.plugins()][:3] == ["local", "azure", "memory"]
