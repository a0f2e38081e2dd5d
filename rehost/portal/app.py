"""``create_app``: the API under /api/v1 and the dashboard under /ui, in one FastAPI app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from rehost.api.app import create_api
from rehost.web import pages, report


def create_app(vault_root: Path, password: Callable[[], str] | None = None) -> FastAPI:
    """The API with the dashboard mounted; the dashboard answers the errors of its own pages."""
    app = create_api(vault_root, password, page_errors=pages.error_page)
    pages.install(app)
    report.install(app)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{pages.router.prefix}/", status_code=307)

    return app
