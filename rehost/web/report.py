"""The migration report as a printable page (``rehost report --format html`` and the dashboard's
/ui/report pages): one self-contained HTML document, its style inline, no script, so it can
be mailed, archived or printed as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from rehost.api.auth import Reader, VaultDep
from rehost.units import human
from rehost.vault import report

_env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                   autoescape=select_autoescape(["html"]))
_env.filters["human"] = human
_env.filters["secs"] = lambda s: "–" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def render(data: dict[str, Any]) -> str:
    """A machine's report (``report.machine_report``) or a plan's (``report.plan_report``)."""
    machines = data["machines"] if "plan" in data else [data]
    return _env.get_template("report.html").render(data=data, machines=machines,
                                                   title=f"plan {data['plan']}" if "plan" in data
                                                   else data["machine"])


router = APIRouter(prefix="/ui/report", include_in_schema=False)


@router.get("/machines/{name}")
def machine_page(name: str, vault: VaultDep, _: Reader) -> HTMLResponse:
    return HTMLResponse(render(report.machine_report(vault, name)))


@router.get("/plans/{name}")
def plan_page(name: str, vault: VaultDep, _: Reader) -> HTMLResponse:
    return HTMLResponse(render(report.plan_report(vault, name)))


def install(app: FastAPI) -> None:
    app.include_router(router)
