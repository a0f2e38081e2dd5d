"""``rehost plan``: a plan built from the command line reads back the same in text and JSON,
and bad input is one line naming what is wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import rehost


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    v = tmp_path / "vault"
    rehost(v, "init")
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    for name in ("db", "web1"):
        rehost(v, "source", "add", "image", name, str(disk))
    return v


def test_build_show_list_delete(vault: Path) -> None:
    rehost(vault, "plan", "create", "shop")
    rehost(vault, "plan", "add", "shop", "db", "--group", "1")
    rehost(vault, "plan", "action", "shop", "--group", "1", "--post", "/bin/true", "--timeout", "2m")
    rehost(vault, "plan", "add", "shop", "web1", "--group", "2")
    rehost(vault, "plan", "action", "shop", "--group", "2", "--manual", "open the shop")
    assert rehost(vault, "plan", "show", "shop", "--json").json() == {"name": "shop", "groups": [
        {"group": 1, "machines": ["db"],
         "actions": [{"group": 1, "kind": "post", "script": "/bin/true", "timeout_s": 120}]},
        {"group": 2, "machines": ["web1"],
         "actions": [{"group": 2, "kind": "manual", "text": "open the shop"}]},
    ]}
    text = rehost(vault, "plan", "show", "shop").out
    assert "group 1: db" in text and "post   /bin/true (timeout 120s)" in text
    assert "manual confirm: open the shop" in text
    assert "shop" in rehost(vault, "plan", "list").out
    rehost(vault, "plan", "delete", "shop")
    assert rehost(vault, "plan", "list", "--json").json() == []


def test_bad_input_is_one_line(vault: Path) -> None:
    rehost(vault, "plan", "create", "shop")
    cases = [
        (("plan", "add", "shop", "nope", "--group", "1"), "no machine named 'nope'"),
        (("plan", "add", "shop", "db", "--group", "3"), "group 3 is not valid"),
        (("plan", "show", "other"), "no plan named 'other'"),
        (("plan", "action", "shop", "--group", "1"), "exactly one of --pre"),
        (("plan", "action", "shop", "--group", "1", "--pre", "a", "--cleanup", "b"), "exactly one of --pre"),
        (("plan", "action", "shop", "--group", "1", "--pre", "x", "--timeout", "soon"), "not a duration"),
    ]
    for args, message in cases:
        r = rehost(vault, *args, check=False)
        assert r.code != 0 and message in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)
    rehost(vault, "plan", "add", "shop", "db", "--group", "1")
    rehost(vault, "plan", "create", "other")
    r = rehost(vault, "plan", "add", "other", "db", "--group", "1", check=False)
    assert r.code != 0 and "'db' is already in plan 'shop'" in r.err
