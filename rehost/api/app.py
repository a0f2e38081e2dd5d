"""The REST API under /api/v1 (the portal, ``rehost.portal.app``, adds the dashboard).

``create_api`` opens the vault once to fail early (no vault, wrong password), then serves
every request from a pool of vault copies (see ``deps``). The OpenAPI document is at
/openapi.json, the interactive docs at /docs. The API knows nothing of the dashboard: pages
build on the API, never the other way round (``docs/design.md``, Layers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

import rehost
from rehost.api import (
    audit,
    errors,
    metrics,
    routes_cycles,
    routes_infra,
    routes_items,
    routes_jobs,
    routes_plans,
    routes_readiness,
    routes_report,
    schemas,
)
from rehost.api.audit import AuditMiddleware
from rehost.api.background import JobLauncher
from rehost.api.deps import VaultPool
from rehost.api.signin import SignInGuard
from rehost.vault import failover, plan_jobs

_ = failover, plan_jobs  # importing them registers the job plans the API runs

#: every operation may answer these, always as {"error": message}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorOut, "description": what}
    for code, what in [
        (400, "The request cannot be used (the message says why)"),
        (401, "No valid token (or the vault password is wrong)"),
        (403, "The token's role is too low"),
        (404, "No such item, point, job, target or policy"),
        (409, "Exists already, or not allowed in the item's current state"),
        (422, "The request does not match the schema"),
    ]
}


def create_api(vault_root: Path, password: Callable[[], str] | None = None, *,
               page_errors: errors.PageErrors | None = None) -> FastAPI:
    """The API alone; ``page_errors`` lets an app that also serves pages answer their errors."""
    pool = VaultPool(vault_root, password)
    jobs = JobLauncher(pool)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(
        title="rehost",
        version=rehost.__version__,
        description="Replicate, test and fail over whole machines. Every request needs "
                    "`Authorization: Bearer TOKEN` (tokens: `rehost token create`).",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.jobs = jobs
    app.state.signin_guard = SignInGuard()
    errors.install(app, page_errors)
    app.add_middleware(AuditMiddleware)  # type: ignore[arg-type]

    api = APIRouter(prefix="/api/v1", responses=ERRORS)
    api.include_router(routes_items.router)
    api.include_router(routes_infra.router)
    api.include_router(routes_jobs.router)
    api.include_router(routes_plans.router)
    api.include_router(routes_readiness.router)
    api.include_router(routes_report.router)
    api.include_router(routes_cycles.router)
    api.include_router(audit.router)
    app.include_router(api)
    # Prometheus scrapes /metrics by convention, outside the versioned API, with a token as well
    app.include_router(metrics.router, responses={code: ERRORS[code] for code in (401, 403)})
    return app
