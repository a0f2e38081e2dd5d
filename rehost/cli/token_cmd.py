"""rehost token create | list | revoke: who may use the API and the dashboard."""

from __future__ import annotations

from typing import Any

import typer

from rehost.api import tokens
from rehost.cli.context import emit_json, err, open_vault, out
from rehost.replication.retention import parse_duration

token_app = typer.Typer(
    help="API tokens for rehost serve: reader (sees), operator (also fails over), admin (also "
         "changes sources, targets, policies, tokens).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")


@token_app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Who or what uses it (e.g. alice, monitoring)."),
    role: str = typer.Option("reader", help="reader, operator or admin."),
    expires: str = typer.Option(None, "--expires", help="It stops working this long from now, e.g. 30d "
                                "(default: never)."),
) -> None:
    """Make a token and print it once: only its hash is kept, it cannot be shown again."""
    lasts = parse_duration(expires) if expires else None
    with open_vault(ctx) as vault:
        row, secret = tokens.create_token(vault, name, role, lasts)
    err.print(f"token {row.name} ({row.role}) created; store it now, it is not shown again:",
              highlight=False)
    out.print(secret, highlight=False, markup=False)


@token_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List tokens (names and roles; the secrets are not kept)."""
    with open_vault(ctx) as vault:
        rows = tokens.list_tokens(vault)
    data: list[dict[str, Any]] = [
        {"name": t.name, "role": t.role, "created_at": t.created_at, "last_used": t.last_used,
         "expires_at": t.expires_at, "expired": tokens.expired(t)} for t in rows
    ]
    if as_json:
        emit_json(data)
        return
    for d in data:
        used = d["last_used"].strftime("%Y-%m-%d %H:%M") if d["last_used"] else "never used"
        ends = ("EXPIRED " if d["expired"] else "expires ") + d["expires_at"].strftime("%Y-%m-%d %H:%M") \
            if d["expires_at"] else ""
        out.print(f"{d['name']:20} {d['role']:9} {used:16} {ends}".rstrip(), highlight=False)


@token_app.command("revoke")
def revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a token at once."""
    with open_vault(ctx) as vault:
        tokens.revoke_token(vault, name)
    out.print(f"token {name} revoked", highlight=False)
