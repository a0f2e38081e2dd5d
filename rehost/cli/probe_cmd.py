"""rehost probe add | list | remove: what a failed-over machine must answer besides booting
(its verdict's checks; ``rehost check`` is the repository's own check)."""

from __future__ import annotations

from pathlib import Path

import typer

from rehost.cli.context import emit_json, open_vault, out
from rehost.errors import UsageError
from rehost.guest.probes import DEFAULT_TIMEOUT_S, Check
from rehost.vault import verdicts

probe_app = typer.Typer(
    help="Probes a failed-over machine must pass (its verdict; `rehost complete` asks for it): "
         "TCP ports that send bytes back, HTTP answers, scripts.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")


@probe_app.command("add")
def add(
    ctx: typer.Context, machine: str, name: str,
    tcp: int = typer.Option(None, "--tcp", help="PORT: passes when bytes come back (after --send)."),
    http: int = typer.Option(None, "--http", help="PORT: GET --path, wants --status (and --expect)."),
    script: Path = typer.Option(None, "--script", help="Run on this host; passes on exit 0. Gets "
                                "REHOST_MACHINE and REHOST_CHECK_CONTEXT (JSON: placement, endpoints)."),
    send: str = typer.Option("", help="TCP: what to send first (\\r\\n escapes allowed)."),
    expect: str = typer.Option("", help="TCP: in the reply; HTTP: in the body."),
    path: str = typer.Option("/", help="HTTP path."),
    status: int = typer.Option(200, help="HTTP status wanted."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, help="Seconds to keep trying (services start "
                                  "after the boot)."),
) -> None:
    """Add a probe named NAME to MACHINE: exactly one of --tcp, --http, --script."""
    given = [k for k, v in (("--tcp", tcp), ("--http", http), ("--script", script)) if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --tcp PORT, --http PORT, --script PATH "
                         f"(got {', '.join(given) or 'none'})")
    if script is not None:
        resolved = script.expanduser().resolve()
        if not resolved.is_file():
            raise UsageError(f"--script {script}: no such file")
        check = Check(name, "script", script=str(resolved), timeout_s=timeout)
    elif tcp is not None:
        check = Check(name, "tcp", port=tcp, send=send, expect=expect, timeout_s=timeout)
    else:
        check = Check(name, "http", port=http, path=path, status=status, expect=expect, timeout_s=timeout)
    with open_vault(ctx) as vault:
        verdicts.add_check(vault, machine, check)
    out.print(f"{machine}: probe {name}: {check.describe()}", highlight=False, markup=False)


@probe_app.command("list")
def list_(ctx: typer.Context, machine: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The machine's checks, in the order they run (after the boot)."""
    with open_vault(ctx) as vault:
        checks = verdicts.list_checks(vault, machine)
    if as_json:
        emit_json([c.to_json() for c in checks])
        return
    if not checks:
        out.print(f"{machine} has no probes: its verdict is the boot alone (rehost probe add)",
                  highlight=False, markup=False)
    for c in checks:
        out.print(f"{c.name:16} {c.describe()} (up to {c.timeout_s:g}s)", highlight=False, markup=False)


@probe_app.command("remove")
def remove(ctx: typer.Context, machine: str, name: str) -> None:
    """Remove a probe."""
    with open_vault(ctx) as vault:
        verdicts.remove_check(vault, machine, name)
    out.print(f"{machine}: probe {name} removed", highlight=False, markup=False)
