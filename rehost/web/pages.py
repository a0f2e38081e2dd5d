"""Dashboard pages (/ui): overview, replicated items, item detail, jobs, recovery plans,
infrastructure, and the setup pages (prepare infrastructure, enable replication).

Pages read through ``rehost.api.views`` exactly what the JSON API returns, and change
nothing themselves: the buttons call the API (with the sign-in cookie and the CSRF header),
so a dashboard action and an API call cannot drift apart. The setup forms are drawn in the
browser from the provider configs ``GET /api/v1/{sources,targets}/kinds`` describe, so a new
provider needs no page of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from rehost.api import routes_plans, views
from rehost.api.auth import Admin, Reader, VaultDep, client_address, guard_of, pool_of
from rehost.api.deps import COOKIE, CSRF_HEADER, Caller
from rehost.api.tokens import Role, authenticate
from rehost.errors import RehostError, UsageError
from rehost.guest.fixups import FIXUPS
from rehost.jobs import runner
from rehost.replication.health import span
from rehost.replication.retention import parse_duration
from rehost.units import human
from rehost.vault import (
    agents,
    audit,
    cycle_history,
    inventory,
    overview,
    plans,
    policies,
    protection,
    roots,
    targets,
    verdicts,
)
from rehost.vault import readiness as vault_readiness
from rehost.vault.models import TargetRow
from rehost.vault.vault import Vault
from rehost.web import charts

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["human"] = human
templates.env.filters["span"] = lambda s: "–" if s is None else span(float(s))
templates.env.globals["csrf_header"] = CSRF_HEADER


def subject_url(job: dict[str, Any]) -> str:
    """A job's subject: its machine's page, or its plan's for a plan job (named by the plan)."""
    page = "plans" if job["kind"].startswith(routes_plans.PLAN_KIND_PREFIX) else "items"
    return f"/ui/{page}/{quote(job['machine'], safe='')}"


templates.env.globals["subject_url"] = subject_url

router = APIRouter(prefix="/ui", include_in_schema=False)


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)


def render(request: Request, name: str, caller: Caller | None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    context.update(caller=caller, operator=bool(caller and caller.may(Role.operator)),
                   admin=bool(caller and caller.may(Role.admin)))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def error_page(request: Request, code: int, message: str) -> Response | None:
    """The API's error hook (``rehost.api.errors.PageErrors``): a dashboard request gets a page
    (or the sign-in page for a missing token), anything else the API's JSON."""
    if not request.url.path.startswith(router.prefix):
        return None
    if code == 401:
        return RedirectResponse(f"{router.prefix}/login", status_code=303)
    caller = getattr(request.state, "caller", None)
    return render(request, "error.html", caller, status_code=code, code=code, message=message)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", None)


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
    """Check the token, then keep it in an HttpOnly cookie (scripts cannot read it)."""
    address = client_address(request)
    guard = guard_of(request)
    guard.check(address)
    with pool_of(request).borrow() as vault:
        row = authenticate(vault, token.strip())
    if row is None:
        guard.failed(address)
        return render(request, "login.html", None, status_code=401,
                      error="that token is not valid (ask an admin: rehost token create NAME --role reader)")
    guard.succeeded(address)
    audit.identified(Caller(row, via_cookie=True).actor(address, via="ui"))
    resp = RedirectResponse("/ui/", status_code=303)
    resp.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/",
                    secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
def logout() -> Response:
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/")
def overview_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    items = overview.machine_views(vault)
    return render(request, "overview.html", caller, overview=views.overview(vault, items), items=items)


@router.get("/items")
def items_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    """Every item; while jobs run (an initial replication after enabling), each item shows its
    job with its progress and the page refreshes itself."""
    busy = [j for j in views.job_views(vault, limit=50) if j["state"] in ("running", "queued")]
    running = {j["machine"]: j for j in reversed(busy)}  # the newest job of each machine
    return render(request, "items.html", caller, items=overview.machine_views(vault), running=running,
                  live=bool(busy))


@router.get("/items/{name}")
def item_page(name: str, request: Request, vault: VaultDep, caller: Reader,
              window: Annotated[str, Query(max_length=16)] = "24h") -> HTMLResponse:
    """The item, its charts over ``window`` (default the last day; at most ``MAX_WINDOW``),
    probes, verdict, points and jobs."""
    item = views.machine_detail(vault, name)
    points = [views.point_view(p) for p in reversed(protection.list_points(vault, name))]
    probes = [views.probe_view(c) for c in verdicts.list_checks(vault, name)]
    return render(request, "item.html", caller, item=item, points=points, probes=probes,
                  window=window, **item_history(vault, name, window),
                  last_verdict=views.last_verdict(vault, name),
                  readiness=vault_readiness.known(vault, name), fixups=FIXUPS,
                  jobs=views.job_views(vault, name, limit=10),
                  targets=[t.name for t in targets.list_targets(vault)],
                  policies=[p.name for p in policies.list_policies(vault)])


#: the longest chart window the item page draws (what retention keeps at least)
MAX_WINDOW = cycle_history.MIN_KEEP


def item_history(vault: Vault, name: str, window: str) -> dict[str, Any]:
    """``charts``: RPO, bytes changed and duration per cycle over ``window`` before now, as
    inline SVG; ``last``: the newest cycle however it ran (None before the first)."""
    try:
        width = min(parse_duration(window), MAX_WINDOW)
    except UsageError:
        width = timedelta(days=1)
    machine = inventory.get_machine(vault, name)
    policy = policies.policy_of(vault, machine)
    now = datetime.now(UTC)
    cycles = cycle_history.history(vault, machine.id, now - width, with_previous=True)
    drawn = charts.item_charts(cycles, policy.rpo_threshold_s if policy else None, now.timestamp(),
                               width.total_seconds())
    return {"charts": drawn, "last": cycles[-1] if cycles else None}


@router.get("/jobs")
def jobs_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    jobs = views.job_views(vault, limit=100)
    live = any(j["state"] in ("running", "queued") for j in jobs)
    return render(request, "jobs.html", caller, jobs=jobs, live=live)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    return render(request, "job.html", caller, job=views.job_view(vault, runner.get_job(vault, job_id)))


@router.get("/plans")
def plans_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    return render(request, "plans.html", caller, plans=routes_plans.plan_summaries(vault))


@router.get("/plans/{name}")
def plan_page(name: str, request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    """The plan's groups in order and its newest plan job: a step per group, each machine's
    child job and checks, the manual action it waits for. The page polls
    ``/api/v1/plans/{name}/job`` and redraws its live part when that changes."""
    plan = plans.show(vault, name).to_json()
    row = routes_plans.newest_plan_job(vault, name)
    job = None if row is None else routes_plans.plan_job_view(vault, row)
    steps = {s["name"]: s for s in job["steps"]} if job else {}
    polling = job is not None and job["state"] in ("queued", "running")  # not ``live``: no refresh
    return render(request, "plan.html", caller, plan=plan, job=job, steps=steps, polling=polling)


@router.get("/infrastructure")
def infrastructure_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    return render(request, "infrastructure.html", caller, sources=views.source_views(vault),
                  targets=[views.target_view(t) for t in targets.list_targets(vault)],
                  policies=[policies.policy_json(p) for p in policies.list_policies(vault)])


@router.get("/audit")
def audit_page(request: Request, vault: VaultDep, caller: Admin) -> HTMLResponse:
    """Who did what (admins only, like ``GET /api/v1/audit``): the newest 500 entries."""
    entries = [audit.entry_json(r) for r in audit.entries(vault, limit=500)]
    return render(request, "audit.html", caller, entries=entries,
                  roots=[r.to_json() for r in roots.allowed_roots(vault)],
                  retention=audit.retention_text(vault))


@router.get("/setup")
def setup_page(request: Request, caller: Reader) -> HTMLResponse:
    """Prepare infrastructure: protection goal, then the source, target and policy forms (admins;
    the forms come from the kinds the API lists, so a new provider needs no page of its own)."""
    return render(request, "setup.html", caller, enroll_url=enroll_url(request))


def enroll_url(request: Request) -> str:
    """Where agents register: what the app that runs the enrollment endpoint says
    (``app.state.enroll_url``), else the port ``rehost serve`` enrolls on
    (``app.state.enroll_port``, default 8744) on the host the browser used."""
    known = getattr(request.app.state, "enroll_url", None)
    if known:
        return str(known)
    port = getattr(request.app.state, "enroll_port", None)
    return agents.enrollment_url(request.url.hostname, int(port or agents.DEFAULT_ENROLL_PORT))


@router.get("/enable")
def enable_page(request: Request, vault: VaultDep, caller: Reader) -> HTMLResponse:
    """Enable replication of several machines: a policy, a target and a network map for each
    target's networks (the source networks are those the machines' NICs are plugged into)."""
    items = overview.machine_views(vault)
    for it in items:
        it["networks"] = sorted({n.get("network") or "default" for n in it["spec"].get("nics") or []}
                                or {"default"})
    target_rows = targets.list_targets(vault)
    target_nets = {t.name: target_networks(t) for t in target_rows}
    return render(request, "enable.html", caller, items=items, target_nets=target_nets,
                  targets=[views.target_view(t) for t in target_rows],
                  policies=[p.name for p in policies.list_policies(vault)],
                  networks=sorted({n for it in items for n in it["networks"]}))


def target_networks(row: TargetRow) -> list[dict[str, Any]]:
    """The networks a target offers (none when its stored settings no longer open it: the
    enable request then says why)."""
    try:
        return [{"name": n.name, "isolated": n.isolated} for n in targets.provider(row).networks()]
    except RehostError:
        return []
