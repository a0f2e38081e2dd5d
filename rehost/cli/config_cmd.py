"""rehost config: the vault's settings, changed on a host (never through the API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rehost.cli.context import emit_json, open_vault, out
from rehost.vault import audit, roots

config_app = typer.Typer(
    help="The vault's settings: the folders the API may use (allowed roots) and how long the "
         "audit log is kept. Only a user on a host of the vault changes them.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("show")
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """The allowed roots and the audit retention."""
    with open_vault(ctx) as vault:
        data: dict[str, Any] = {"allowed_roots": [r.to_json() for r in roots.allowed_roots(vault)],
                "audit_retention": audit.retention_text(vault)}
    if as_json:
        emit_json(data)
        return
    out.print("folders the API may use (images, local target folders, probe scripts, sockets):",
              highlight=False)
    for r in data["allowed_roots"]:
        notes = [n for n, on in (("devices too", r["devices"]), ("the vault's own", r["default"])) if on]
        out.print(f"  {r['path']}" + (f"  ({', '.join(notes)})" if notes else ""), highlight=False,
                  markup=False)
    out.print(f"audit log kept: {data['audit_retention']}", highlight=False)


@config_app.command("allow-root")
def allow_root(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="An existing folder on this host (kept with symlinks resolved)."),
    devices: bool = typer.Option(False, "--devices", help="Also allow device nodes (/dev/...) under it."),
) -> None:
    """Let paths given through the API (image sources, local target folders, probe scripts,
    QEMU sockets) lead into FOLDER. The CLI on this host is never limited by these."""
    with open_vault(ctx) as vault:
        root = roots.allow_root(vault, folder, devices=devices)
    out.print(f"the API may now use {root.path}" + (" (devices too)" if devices else ""), highlight=False,
              markup=False)


@config_app.command("deny-root")
def deny_root(ctx: typer.Context,
              folder: Path = typer.Argument(..., help="A folder added with allow-root.")) -> None:
    """Take back a folder added with allow-root (registered sources and targets stay)."""
    with open_vault(ctx) as vault:
        roots.deny_root(vault, folder)
    out.print(f"the API may no longer use {folder}", highlight=False, markup=False)


@config_app.command("audit-retention")
def audit_retention(ctx: typer.Context,
                    keep: str = typer.Argument(..., help="How long entries are kept, e.g. 90d.")) -> None:
    """How long the audit log keeps entries (default 400d); older ones are deleted."""
    with open_vault(ctx) as vault:
        audit.set_retention(vault, keep)
        gone = audit.apply_retention(vault)
    out.print(f"audit entries are kept {keep}" + (f"; {gone} older ones deleted" if gone else ""),
              highlight=False)
