"""Every endpoint needs a token; roles are ordered reader < operator < admin; the dashboard's
cookie works only with the CSRF header for changes; the vault keeps hashes, not tokens."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from rehost.api.signin import SignInGuard
from rehost.vault.models import TokenRow
from tests.api.portal import ROLES, Portal

#: (method, path) -> the lowest role allowed; a new endpoint without a row here fails the test
MIN_ROLE = {
    ("GET", "/metrics"): "reader",
    ("GET", "/api/v1/sources"): "reader",
    ("POST", "/api/v1/sources/image"): "admin",
    ("POST", "/api/v1/sources/physical"): "admin",
    ("GET", "/api/v1/sources/kinds"): "reader",
    ("POST", "/api/v1/sources"): "admin",
    ("GET", "/api/v1/sources/{name}/verify"): "reader",
    ("POST", "/api/v1/sources/{name}/network-map"): "admin",
    ("GET", "/api/v1/machines"): "reader",
    ("GET", "/api/v1/machines/{name}"): "reader",
    ("GET", "/api/v1/machines/{name}/points"): "reader",
    ("POST", "/api/v1/machines/{name}/enable"): "operator",
    ("POST", "/api/v1/machines/{name}/disable"): "operator",
    ("POST", "/api/v1/machines/{name}/replicate"): "operator",
    ("POST", "/api/v1/machines/{name}/test-failover"): "operator",
    ("POST", "/api/v1/machines/{name}/test-cleanup"): "operator",
    ("POST", "/api/v1/machines/{name}/failover"): "operator",
    ("POST", "/api/v1/machines/{name}/complete"): "operator",
    ("GET", "/api/v1/machines/{name}/probes"): "reader",
    ("POST", "/api/v1/machines/{name}/probes"): "operator",
    ("DELETE", "/api/v1/machines/{name}/probes/{probe}"): "operator",
    ("GET", "/api/v1/machines/{name}/readiness"): "reader",
    ("GET", "/api/v1/targets"): "reader",
    ("POST", "/api/v1/targets/local"): "admin",
    ("GET", "/api/v1/targets/kinds"): "reader",
    ("POST", "/api/v1/targets"): "admin",
    ("POST", "/api/v1/targets/{name}/verify"): "operator",
    ("GET", "/api/v1/policies"): "reader",
    ("POST", "/api/v1/policies"): "admin",
    ("PATCH", "/api/v1/policies/{name}"): "admin",
    ("POST", "/api/v1/policies/{name}/attach"): "admin",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{name}"): "admin",
    ("GET", "/api/v1/jobs"): "reader",
    ("GET", "/api/v1/jobs/{job_id}"): "reader",
    ("POST", "/api/v1/jobs/{job_id}/cancel"): "operator",
    ("GET", "/api/v1/plans"): "reader",
    ("GET", "/api/v1/plans/{name}"): "reader",
    ("GET", "/api/v1/plans/{name}/job"): "reader",
    ("POST", "/api/v1/plans/{name}/failover"): "operator",
    ("POST", "/api/v1/plans/{name}/confirm"): "operator",
    ("POST", "/api/v1/plans/{name}/complete"): "operator",
    ("GET", "/api/v1/overview"): "reader",
    ("GET", "/api/v1/whoami"): "reader",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/machines/{name}/report"): "reader",
    ("GET", "/api/v1/machines/{name}/cycles"): "reader",
    ("GET", "/api/v1/plans/{name}/report"): "reader",
    ("GET", "/api/v1/config/roots"): "admin",
}


def _endpoints(portal: Portal) -> list[tuple[str, str]]:
    """Every operation the OpenAPI document publishes (the dashboard's pages are not in it)."""
    paths = portal.client.get("/openapi.json").json()["paths"]
    return sorted((m.upper(), p) for p, ops in paths.items() for m in ops)


def _url(path: str) -> str:
    # "nope": nothing exists by that name, so an admitted call cannot change anything
    return path.replace("{name}", "nope").replace("{job_id}", "nope").replace("{probe}", "nope")


def test_the_role_table_covers_every_endpoint(portal: Portal) -> None:
    assert set(_endpoints(portal)) == set(MIN_ROLE)


@pytest.mark.parametrize("header", [None, "Bearer ", "Bearer rht_not-a-token", "Basic dXNlcjpwYXNz",
                                    "Bearer " + "x" * 5000])
def test_every_endpoint_refuses_a_missing_or_bad_token(portal: Portal, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in _endpoints(portal):
        portal.app.state.signin_guard = SignInGuard()  # wrong tokens are slowed down after five
        r = portal.client.request(method, _url(path), headers=headers, json={})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "rehost token create" in r.json()["error"]


def test_roles_are_ordered_and_enforced_per_endpoint(portal: Portal) -> None:
    for (method, path), lowest in MIN_ROLE.items():
        for role in ROLES:
            r = portal.client.request(method, _url(path), headers=portal.auth(role), json={})
            if ROLES.index(role) < ROLES.index(lowest):
                assert r.status_code == 403, (method, path, role, r.text)
                assert r.json() == {"error": f"token '{role}-token' has the {role} role; "
                                             f"this needs {lowest} or higher"}
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.text)


def test_a_revoked_token_stops_working_at_once(portal: Portal) -> None:
    assert portal.get("/whoami", "operator").json() == {"name": "operator-token", "role": "operator"}
    r = portal.client.delete("/api/v1/tokens/operator-token", headers=portal.auth("admin"))
    assert r.status_code == 204
    assert portal.get("/whoami", "operator").status_code == 401


def test_the_vault_keeps_only_a_hash_and_when_a_token_was_used(portal: Portal) -> None:
    portal.get("/whoami", "admin")
    vault = portal.open_vault()
    try:
        with vault.session() as s:
            rows = {t.name: t for t in s.scalars(select(TokenRow))}
    finally:
        vault.close()
    for role, secret in portal.tokens.items():
        row = rows[f"{role}-token"]
        assert row.role == role and secret not in row.secret_hash
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert rows["admin-token"].last_used is not None and rows["reader-token"].last_used is None
    database = portal.vault / "vault.db"  # on the PostgreSQL tier the rows above are all there is
    assert not database.exists() or database.read_bytes().find(portal.tokens["admin"].encode()) == -1


def test_the_cookie_reads_and_needs_the_csrf_header_to_change(portal: Portal) -> None:
    c = portal.client
    c.cookies.set("rehost_token", portal.tokens["operator"])
    try:
        assert c.get("/api/v1/whoami").json()["role"] == "operator"
        r = c.post("/api/v1/machines/web/replicate")
        assert r.status_code == 403 and "X-Rehost-CSRF" in r.json()["error"]
        r = c.post("/api/v1/machines/web/replicate", headers={"X-Rehost-CSRF": "1"})
        assert r.status_code == 202
        assert portal.wait_job(r.json()["id"])["state"] == "succeeded"
    finally:
        c.cookies.clear()


def test_dashboard_sign_in_sets_an_httponly_cookie(portal: Portal) -> None:
    c = portal.client
    r = c.get("/ui/items", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = c.post("/ui/login", data={"token": "rht_wrong"}, follow_redirects=False)
    assert r.status_code == 401 and "not valid" in r.text
    r = c.post("/ui/login", data={"token": portal.tokens["reader"]}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and portal.tokens["reader"] in cookie
    page = c.get("/ui/items")
    assert page.status_code == 200 and "reader-token (reader)" in page.text
    assert "Replicate now" not in page.text  # a reader sees no action buttons
    r = c.post("/ui/logout", follow_redirects=False)
    assert r.status_code == 303 and 'rehost_token=""' in r.headers["set-cookie"]
