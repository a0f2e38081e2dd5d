"""The API stands alone; the portal mounts the dashboard on it (docs/design.md, Layers).

The API's error handler knows no pages: the portal hands it the dashboard's error page, so a
failing dashboard request gets HTML and a failing API request JSON, in the same app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from rehost.api.app import create_api
from tests.api.portal import Portal, make_disk, make_vault


def test_the_api_alone_serves_json_and_no_pages(tmp_path: Path) -> None:
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"), replicate=False)
    auth = {"Authorization": f"Bearer {tokens['reader']}"}
    with TestClient(create_api(tmp_path / "vault")) as c:
        assert [m["name"] for m in c.get("/api/v1/machines", headers=auth).json()] == ["web"]
        r = c.get("/ui/items/nosuch", headers=auth)
        assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_the_portal_answers_a_page_with_a_page_and_the_api_with_json(portal: Portal) -> None:
    c = portal.client
    try:
        signed_in = c.post("/ui/login", data={"token": portal.tokens["reader"]}, follow_redirects=False)
        assert signed_in.is_redirect
        page = c.get("/ui/items/nosuch")
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert "nosuch" in page.text
        api = c.get("/api/v1/machines/nosuch")
        assert api.status_code == 404 and "nosuch" in api.json()["error"]
    finally:
        c.cookies.clear()
