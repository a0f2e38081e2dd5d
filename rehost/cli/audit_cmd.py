"""rehost audit: who did what, from the vault's append-only log."""

from __future__ import annotations

import typer

from rehost.cli.context import emit_json, listing, open_vault, short_time
from rehost.vault import audit


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)


def audit_cmd(
    ctx: typer.Context,
    since: str = typer.Option(None, "--since", help="24h, 7d, or an ISO time (2026-12-05T10:00)."),
    actor: str = typer.Option(None, "--actor", help="Only this actor: token:NAME, local:USER."),
    limit: int = typer.Option(200, "--limit", min=1, max=100_000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Who did what: every state-changing command and API request, with its actor and result
    (secrets shown as ***)."""
    with open_vault(ctx) as vault:
        rows = audit.entries(vault, since=audit.parse_since(since) if since else None, actor=actor,
                             limit=limit)
        data = [audit.entry_json(r) for r in rows]
    if as_json:
        emit_json(data)
        return
    for e in data:
        who = e["actor"] + (f" ({e['role']})" if e["role"] else "")
        result = e["result"] + (f" {e['status']}" if e["status"] else "")
        result += f" job {e['job']}" if e["job"] else ""
        listing(f"{short_time(e['time'])}  {who:28} {e['via']:6} {e['operation']} {e['object']}  {result}",
                e["detail"])
