"""``rehost --server URL --token T``: the main commands through a live server give what the
local CLI gives, with the same exit codes for refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rehost.cli.api_client import remote_app, wants_server
from rehost.cli.token_cmd import token_app
from rehost.errors import InvalidState, NotFound, RehostError
from tests.api.portal import Portal, live_server
from tests.cli_helpers import rehost


@pytest.fixture
def server(portal: Portal) -> Iterator[str]:
    with live_server(portal.app) as url:
        yield url


def remote(server: str, token: str, *args: str) -> tuple[int, str, str]:
    """Run the remote app; a RehostError ends as rehost.cli.main.main ends it (code, one line)."""
    r = CliRunner().invoke(remote_app, ["--server", server, "--token", token, *args])
    if isinstance(r.exception, RehostError):
        return r.exception.exit_code, r.stdout, r.stderr + f"rehost: error: {r.exception}"
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_wants_server() -> None:
    assert wants_server(["--server", "http://x", "machines"]) and wants_server(["--server=http://x", "jobs"])
    assert not wants_server(["--vault", "v", "machines"])


def test_machines_points_jobs_match_the_local_cli(portal: Portal, server: str) -> None:
    tok = portal.tokens["operator"]
    code, out, _ = remote(server, tok, "machines", "--json")
    local = rehost(portal.vault, "machines", "--json").json()
    remote_items = json.loads(out)
    assert code == 0 and [m["name"] for m in remote_items] == [m["name"] for m in local]
    assert remote_items[0]["latest_point"] == local[0]["latest_point"]
    code, out, _ = remote(server, tok, "points", "web", "--json")
    assert json.loads(out) == rehost(portal.vault, "points", "web", "--json").json()

    code, out, err = remote(server, tok, "replicate", "web")
    assert code == 0 and len(out.strip()) == 64, err
    assert out.strip() == rehost(portal.vault, "points", "web", "--json").json()[-1]["id"]
    code, out, _ = remote(server, tok, "jobs", "--json")
    job = json.loads(out)[0]
    assert job["kind"] == "replicate" and job["state"] == "succeeded"
    code, out, _ = remote(server, tok, "job", job["id"])
    assert code == 0 and "✓ Replicate" in out


def test_refusals_keep_the_local_exit_codes(portal: Portal, server: str) -> None:
    code, _, err = remote(server, portal.tokens["operator"], "failover", "web", "--cleanup")
    assert code == InvalidState.exit_code and "no test failover of web to clean up" in err
    code, _, err = remote(server, portal.tokens["operator"], "points", "nope")
    assert code == NotFound.exit_code and "no machine named 'nope'" in err
    code, _, err = remote(server, portal.tokens["reader"], "replicate", "web")
    assert code != 0 and "403" in err and "needs operator" in err
    code, _, err = remote(server, "rht_wrong", "machines")
    assert code != 0 and "401" in err
    code, _, err = remote("http://127.0.0.1:9", "rht_x", "machines")
    assert code != 0 and "cannot reach" in err


def test_token_commands(tmp_path: Path, portal: Portal) -> None:
    runner = CliRunner()
    from rehost.cli.context import Options

    obj = Options(vault_path=portal.vault)
    r = runner.invoke(token_app, ["create", "ci", "--role", "operator"], obj=obj)
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()
    assert secret.startswith("rht_") and "not shown again" in r.stderr
    assert portal.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).json() == {
        "name": "ci", "role": "operator"}
    r = runner.invoke(token_app, ["list", "--json"], obj=obj)
    names = [t["name"] for t in json.loads(r.stdout)]
    assert names == ["admin-token", "ci", "operator-token", "reader-token"]
    r = runner.invoke(token_app, ["create", "x", "--role", "root"], obj=obj)
    assert r.exit_code != 0 and "role 'root' does not exist" in str(r.exception)
    assert runner.invoke(token_app, ["revoke", "ci"], obj=obj).exit_code == 0
    r2 = portal.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert r2.status_code == 401


def test_readiness_refusals_match_the_local_cli(portal: Portal, server: str) -> None:
    """(A report itself needs an appliance launch: tests/vault/test_readiness.py has one.)"""
    tok = portal.tokens["reader"]
    code, _, err = remote(server, tok, "readiness", "nobody")
    local = rehost(portal.vault, "readiness", "nobody", check=False)
    assert code == local.code == NotFound.exit_code and "no machine named 'nobody'" in err


def test_failover_readiness_options_reach_the_server(portal: Portal, server: str) -> None:
    """--fix-up and --force-readiness are checked the same way through the server."""
    tok = portal.tokens["operator"]
    code, _, err = remote(server, tok, "failover", "web", "--test", "--fix-up", "initrd")
    local = rehost(portal.vault, "failover", "web", "--test", "--fix-up", "initrd", check=False)
    assert code == local.code != 0
    assert "unknown fix-up 'initrd'" in err and "unknown fix-up 'initrd'" in local.err
    code, _, err = remote(server, tok, "failover", "web", "--test", "--reason", "why")
    assert code != 0 and "--reason goes with --force-readiness" in err
    code, _, err = remote(server, tok, "failover", "web", "--cleanup", "--fix-up", "dhcp")
    assert code != 0 and "go with a (test) failover, not --cleanup" in err
