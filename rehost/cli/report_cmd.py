"""rehost report MACHINE|PLAN: the migration report, for the people who update documentation,
DNS, inventory and backups afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from rehost.cli.context import open_vault, out
from rehost.errors import NotFound, UsageError
from rehost.units import human
from rehost.vault import plans, report
from rehost.vault.inventory import get_machine

FORMATS = ("md", "html", "json")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A machine, or a recovery plan (all its machines)."),
    fmt: str = typer.Option("md", "--format", help="md (text), html (printable) or json."),
    output: Path = typer.Option(None, "--output", "-o", help="Write it to this new file instead of stdout."),
) -> None:
    """Where each machine went and how: source and target, disks, the recovery point used,
    step timings, the verdict, old and new addresses, what completion removed, what is left to do."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use md, html or json")
    if output is not None and output.exists():
        raise UsageError(f"{output} exists; give a new file (a report never overwrites one)")
    with open_vault(ctx) as vault:
        data = _gather(vault, name)
    if fmt == "json":
        text = json.dumps(data, indent=2, default=str) + "\n"
    elif fmt == "html":
        from rehost.portal.report import render  # jinja2 only when asked for

        text = render(data)
    else:
        text = markdown(data)
    if output is None:
        out.print(text, end="", highlight=False, markup=False, soft_wrap=True)
    else:
        output.write_text(text)
        out.print(f"report written to {output}", highlight=False, markup=False)


def _gather(vault: Any, name: str) -> dict[str, Any]:
    try:
        get_machine(vault, name)
        return report.machine_report(vault, name)
    except NotFound:
        pass
    try:
        plans.show(vault, name)
    except NotFound:
        raise NotFound(f"no machine or plan named {name!r} (rehost machines, rehost plan list)") from None
    return report.plan_report(vault, name)


def _secs(s: float | None) -> str:
    return "–" if s is None else f"{s:.1f} s"


def _nic(n: dict[str, Any]) -> str:
    return f"{n['mac']} on {n['network']}" + (f" {', '.join(n['addresses'])}" if n["addresses"] else "")


def markdown(data: dict[str, Any]) -> str:
    machines = data["machines"] if "plan" in data else [data]
    title = f"plan {data['plan']}" if "plan" in data else data["machine"]
    lines = [f"# Migration report: {title}", "", f"Made on {data['made_at']} from the vault's records.", ""]
    for r in machines:
        t = r["target"]
        lines += [f"## {r['machine']}", "",
                  f"- State: {r['state']}" + (f" ({r['state_reason']})" if r["state_reason"] else ""),
                  f"- Source: {r['source']['kind']} {r['source']['name']}",
                  "- Disks: " + ", ".join(f"disk {d['index']} {human(d['size'])} ({d['format']})"
                                          for d in r["disks"]),
                  f"- Target: {t['name']} ({t['kind']}), machine {t['vm']} at {t['location']}" if t["name"]
                  else "- Target: not failed over",
                  f"- Recovery point: {r['point']['id']} {r['point']['chosen'] or ''}".rstrip(),
                  "- Old addresses: " + ("; ".join(_nic(n) for n in r["addresses"]["old"]) or "–"),
                  "- New addresses: " + (", ".join(r["addresses"]["new"]) or "–")]
        v = r["verdict"]
        lines.append("- Verdict: " + ("none yet" if v is None else ("passed" if v["ok"] else "FAILED")
                                      + "".join(f"; {c['name']}: {'ok' if c['ok'] else 'failed'}"
                                                for c in v.get("checks", []))))
        if r["forced"]:
            lines.append(f"- Completed without a passing verdict: {r['forced']['reason']}")
        lines.append("- Removed at completion: " + ("; ".join(r["removed"]) or "nothing yet"))
        for label, job in (("Test failover", r["test_failover"]), ("Failover", r["failover"]),
                           ("Completion", r["complete"])):
            if job:
                lines += ["", f"### {label}: job {job['id']}, {job['state']}, {_secs(job['seconds'])}", "",
                          "| step | state | time | detail |", "|---|---|--:|---|"]
                lines += [f"| {s['title']} | {s['state']} | {_secs(s['seconds'])} | "
                          f"{s['detail'].replace('|', '/')} |" for s in job["steps"]]
        lines += ["", "### Still to do", ""] + [f"{i}. {x}" for i, x in enumerate(r["to_do"], 1)] + [""]
    return "\n".join(lines) + "\n"
