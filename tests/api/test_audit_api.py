"""Issue 19 through the API: paths are confined to the allowed roots, every change is in the
audit log with its actor and result and without secrets, tokens expire, wrong tokens slow down."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from rehost.api.tokens import create_token
from rehost.vault.models import TokenRow
from rehost.vault.vault import Vault
from tests.api.plan_world import make_plan_vault
from tests.api.portal import Portal, make_disk, make_vault, portal_for
from tests.cli_helpers import rehost


@pytest.fixture
def confined(tmp_path: Path) -> Iterator[Portal]:
    """A vault whose API may use only its own imports/ and targets/ folders (the default)."""
    vault = Vault.init(tmp_path / "vault")
    try:
        tokens = {"admin": create_token(vault, "admin-token", "admin")[1]}
    finally:
        vault.close()
    (tmp_path / "vault" / "imports").mkdir()
    with portal_for(tmp_path, tokens) as p:
        yield p


def _machines(p: Portal) -> list[str]:
    return [m["name"] for m in p.get("/machines", "admin").json()]


def test_image_paths_from_the_api_stay_inside_the_allowed_roots(confined: Portal, tmp_path: Path) -> None:
    p = confined
    outside = make_disk(tmp_path / "outside.raw")
    inside = make_disk(tmp_path / "vault" / "imports" / "inside.raw")
    (tmp_path / "vault" / "imports" / "sneaky.raw").symlink_to(outside)
    cases = [
        (str(outside), "is outside the folders the API may use"),
        (str(tmp_path / "vault" / "imports" / "sneaky.raw"), f"(a symlink to {outside})"),
        (str(tmp_path / "vault" / "imports" / ".." / ".." / "outside.raw"), "is outside"),
        ("/etc/passwd", "is outside"),
        ("imports/inside.raw", "give an absolute path"),
    ]
    for path, says in cases:
        for route, body in [("/sources/image", {"name": "m", "paths": [path]}),
                            ("/sources", {"kind": "image", "name": "m", "config": {"paths": [path]}})]:
            r = p.post(route, body, role="admin")
            assert r.status_code in (400, 403) and says in r.json()["error"], (route, path, r.text)
            assert "rehost config allow-root" in r.json()["error"] or r.status_code == 400
    assert _machines(p) == []  # nothing was registered

    r = p.post("/sources/image", {"name": "m", "paths": [str(inside)]}, role="admin")
    assert r.status_code == 201, r.text
    assert _machines(p) == ["m"]


def test_a_vmx_inside_a_root_cannot_name_a_disk_outside(confined: Portal, tmp_path: Path) -> None:
    p = confined
    outside = make_disk(tmp_path / "secret-flat.vmdk")
    vmx = tmp_path / "vault" / "imports" / "vm.vmx"
    vmx.write_text(f'config.version = "8"\nvirtualHW.version = "14"\ndisplayName = "vm"\n'
                   f'scsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "{outside}"\n')
    r = p.post("/sources/image", {"name": "vm", "paths": [str(vmx)]}, role="admin")
    assert r.status_code in (400, 403), r.text
    assert _machines(p) == []


def test_devices_need_a_root_allowed_for_devices(confined: Portal, tmp_path: Path) -> None:
    p = confined
    link = tmp_path / "vault" / "imports" / "disk0"
    link.symlink_to("/dev/null")
    r = p.post("/sources/image", {"name": "d", "paths": [str(link)]}, role="admin")
    assert r.status_code == 403 and "is outside" in r.json()["error"]  # /dev is no root
    rehost(p.vault, "config", "allow-root", "/dev", "--devices")
    rehost(p.vault, "config", "deny-root", "/dev")
    rehost(p.vault, "config", "allow-root", "/dev")
    r = p.post("/sources/image", {"name": "d", "paths": ["/dev/null"]}, role="admin")
    assert r.status_code == 403 and "is a device" in r.json()["error"] and "--devices" in r.json()["error"]
    assert _machines(p) == []


def test_local_target_folders_stay_inside_the_allowed_roots(confined: Portal, tmp_path: Path) -> None:
    p = confined
    (tmp_path / "vault" / "targets").mkdir()
    (tmp_path / "vault" / "targets" / "escape").symlink_to(tmp_path)
    for path in ["/", str(tmp_path / "elsewhere"), str(tmp_path / "vault" / "targets" / "escape" / "t")]:
        for route, body in [("/targets/local", {"name": "t", "path": path}),
                            ("/targets", {"kind": "local", "name": "t", "config": {"path": path}}),
                            ("/targets", {"kind": "memory", "name": "t", "config": {"path": path}})]:
            r = p.post(route, body, role="admin")
            assert r.status_code == 403 and "outside the folders" in r.json()["error"], (route, path, r.text)
    assert p.get("/targets", "admin").json() == []
    inside = str(tmp_path / "vault" / "targets" / "t")
    r = p.post("/targets/local", {"name": "t", "path": inside}, role="admin")
    assert r.status_code == 201, r.text
    # the allowed roots are visible to admins, and the CLI adds one (never the API)
    roots = p.get("/config/roots", "admin").json()
    assert [r["default"] for r in roots] == [True, True]
    rehost(p.vault, "config", "allow-root", str(tmp_path))
    assert p.post("/targets/local", {"name": "t2", "path": str(tmp_path / "elsewhere")},
                  role="admin").status_code == 201
    r = p.client.post("/api/v1/config/roots", json={"path": "/"}, headers=p.auth("admin"))
    assert r.status_code == 405


def test_a_probe_script_must_lie_in_an_allowed_root(tmp_path: Path) -> None:
    tokens = make_vault(tmp_path / "w", make_disk(tmp_path / "disk.raw"), replicate=False)
    script = tmp_path / "check.sh"  # outside w/, the folder make_vault allowed
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    with portal_for(tmp_path / "w", tokens) as p:
        probe = {"name": "app", "kind": "script", "script": str(script)}
        r = p.post("/machines/web/probes", probe, role="admin")
        assert r.status_code == 403 and "outside the folders" in r.json()["error"]
        assert p.get("/machines/web/probes").json() == []


def _audit(vault: Path) -> list[dict[str, object]]:
    return rehost(vault, "audit", "--json").json()  # type: ignore[no-any-return]


def test_changes_through_the_api_are_in_the_audit_log_with_actor_and_result(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, machines=("db",))
    with portal_for(tmp_path, tokens) as p:
        r = p.post("/machines/db/replicate")
        assert r.status_code == 202
        replicate_job = r.json()["id"]
        assert p.wait_job(replicate_job)["state"] == "succeeded"
        r = p.post("/machines/db/failover", {"shutdown_source": False})
        assert r.status_code == 202, r.text
        failover_job = r.json()["id"]
        assert p.wait_job(failover_job)["state"] == "succeeded"
        r = p.post("/tokens", {"name": "ci", "role": "reader"}, role="admin")
        new_secret = r.json()["token"]
        assert p.post("/tokens", {"name": "ci", "role": "reader"}, role="admin").status_code == 409
        assert p.post("/policies", {"name": "p"}, role="reader").status_code == 403
        assert p.get("/jobs/" + failover_job).json()["actor"] == "token:operator-token"

    entries = _audit(tmp_path / "vault")
    by_op: dict[str, list[dict[str, object]]] = {}
    for e in entries:
        by_op.setdefault(str(e["operation"]), []).append(e)
    rep = by_op["POST /api/v1/machines/{name}/replicate"][0]
    assert [rep[k] for k in ("actor", "role", "via", "object", "result", "status", "job")] == [
        "token:operator-token", "operator", "api", "db", "ok", 202, replicate_job]
    fo = by_op["POST /api/v1/machines/{name}/failover"][0]
    assert (fo["actor"], fo["result"], fo["job"]) == ("token:operator-token", "ok", failover_job)
    assert fo["params"] == {"name": "db", "body": {"shutdown_source": False}}
    ended = [e for e in by_op["job failover ended"] if e["job"] == failover_job]
    assert ended and ended[0]["actor"] == "token:operator-token" and ended[0]["result"] == "ok"
    made = by_op["POST /api/v1/tokens"]
    assert [(e["actor"], e["result"], e["status"], e["object"]) for e in made] == [
        ("token:admin-token", "error", 409, "ci"), ("token:admin-token", "ok", 201, "ci")]
    assert "already exists" in str(made[0]["detail"])
    denied = by_op["POST /api/v1/policies"][0]
    assert (denied["actor"], denied["result"], denied["status"]) == ("token:reader-token", "denied", 403)
    # the setup made with the services directly is not there; the CLI's own reading is not either
    assert all(not str(e["operation"]).startswith("rehost audit") for e in entries)
    text = json.dumps(entries)
    assert new_secret not in text and "rht_" not in text
    for secret in tokens.values():
        assert secret not in text


def test_no_secret_reaches_the_audit_log(tmp_path: Path) -> None:
    tokens = make_plan_vault(tmp_path, machines=("db",))
    sas = "https://acct.blob.core.windows.net/c?sv=2023-01-03&sig=AbC%2Bsecret%3D"
    with portal_for(tmp_path, tokens) as p:
        # a physical source's answer holds its one-time passphrase: the response is never kept
        r = p.post("/sources/physical", {"name": "srv"}, role="admin")
        assert r.status_code == 201, r.text
        passphrase = r.json()["passphrase"]
        # secrets sent in a request's body, in fields that name them and in values that are them
        p.post("/targets", {"kind": "azure", "name": "az", "config": {
            "subscription": "s", "resource_group": "g", "location": "x", "network": "n", "subnet": "s",
            "storage_account": sas, "password": "hunter2", "client_secret": "p4ss"}}, role="admin")
        # secrets in values whatever their field: a token, a storage account key
        p.post("/machines/db/probes", {"name": "x", "kind": "tcp", "port": 1, "send": tokens["admin"],
                                       "expect": "AccountKey=c2VjcmV0a2V5;"})
        # the sign-in form's token, right and wrong
        p.client.post("/ui/login", data={"token": tokens["reader"]}, follow_redirects=False)
        p.client.post("/ui/login", data={"token": "rht_wrongwrongwrong"}, follow_redirects=False)
    text = json.dumps(_audit(tmp_path / "vault"))
    for secret in (passphrase, "sig=AbC", "hunter2", "p4ss", tokens["reader"], "rht_wrong", tokens["admin"],
                   "c2VjcmV0a2V5"):
        assert secret not in text, secret
    assert "***" in text and "/ui/login" in text


def test_an_expired_token_gets_401(tmp_path: Path) -> None:
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"), replicate=False)
    vault = Vault.open(tmp_path / "vault")
    try:
        _, short = create_token(vault, "short", "reader", timedelta(seconds=1))
        _, long = create_token(vault, "long", "reader", timedelta(days=30))
    finally:
        vault.close()
    with portal_for(tmp_path, tokens) as p:
        assert p.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {long}"}).status_code == 200
        vault = Vault.open(tmp_path / "vault")
        try:  # one second is long on a loaded machine: age the token instead of sleeping
            with vault.session() as s, s.begin():
                s.execute(update(TokenRow).where(TokenRow.name == "short")
                          .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        finally:
            vault.close()
        r = p.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {short}"})
        assert r.status_code == 401
        listed = {t["name"]: t for t in p.get("/tokens", "admin").json()}
        assert listed["long"]["expires_at"] is not None and listed["admin-token"]["expires_at"] is None
        r = p.post("/tokens", {"name": "t", "role": "reader", "expires": "soon"}, role="admin")
        assert r.status_code == 400 and "not a duration" in r.json()["error"]
    out = rehost(tmp_path / "vault", "token", "list").out
    assert "EXPIRED" in out and "short" in out


def test_repeated_wrong_tokens_are_slowed_down(portal: Portal) -> None:
    wrong = {"Authorization": "Bearer rht_" + os.urandom(8).hex()}
    codes = [portal.client.get("/api/v1/machines", headers=wrong).status_code for _ in range(5)]
    assert codes == [401] * 5
    r = portal.client.get("/api/v1/machines", headers=wrong)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "5 wrong tokens" in r.json()["error"]
    # while it waits, even a right token from that address is not checked
    assert portal.get("/machines").status_code == 429
    # the sign-in page is slowed down the same way
    r = portal.client.post("/ui/login", data={"token": "rht_x"}, follow_redirects=False)
    assert r.status_code == 429
    entries = _audit(portal.vault)
    assert sum(1 for e in entries if e["status"] == 401 and e["result"] == "denied") == 5
    assert any(e["status"] == 429 for e in entries)
