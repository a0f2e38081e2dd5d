"""rehost target add KIND NAME [options] | add-local | kinds | verify | list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rehost.cli.config_options import config_command
from rehost.cli.context import emit_json, err, listing, open_vault, out, print_wrapped
from rehost.errors import InvalidState
from rehost.targets import registry
from rehost.vault import targets

target_app = typer.Typer(help="Where machines fail over to: this host's QEMU, Azure (rehost target kinds).",
                         no_args_is_help=True)
add_app = typer.Typer(help="Register a target of a kind (see: rehost target kinds).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    for plugin in registry.plugins():
        add_app.command(plugin.kind, help=plugin.summary)(
            config_command(plugin.config, _adder(plugin.kind), "Name of the new target."))
    target_app.add_typer(add_app, name="add")
    app.add_typer(target_app, name="target")


def _adder(kind: str) -> Any:
    def add(ctx: typer.Context, name: str, options: dict[str, Any]) -> None:
        with open_vault(ctx) as vault:
            row = targets.add_target(vault, kind, name, options)
        where = row.settings.get("path", "")
        out.print(f"added {kind} target {name}" + (f" at {where}" if where else "")
                  + f"; check it with: rehost target verify {name}", highlight=False)

    return add


@target_app.command("kinds")
def kinds(as_json: bool = typer.Option(False, "--json")) -> None:
    """The kinds of target, their options and what they can do."""
    data = registry.describe()
    if as_json:
        emit_json(data)
        return
    for k in data:
        print_wrapped(f"{k['kind']:8} {k['summary']}", hanging=" " * 9)
        for o in k["options"]:
            need = "required" if o["required"] else f"default {o['default']}"
            flag = "--" + o["name"].replace("_", "-")
            print_wrapped(f"{flag:18} {o['help']} ({need})", " " * 9, hanging=" " * 28)


@target_app.command("add-local")
def add_local(
    ctx: typer.Context,
    name: str,
    path: Path = typer.Option(..., help="Folder where failed-over machines and their disks live."),
    accel: str = typer.Option("tcg", help="tcg (software emulation) or kvm (where /dev/kvm works)."),
    memory_mib: int = typer.Option(
        256, help="The most memory a machine gets here, MiB: its source's memory up to this."),
) -> None:
    """Register this host's QEMU as a failover target (same as: rehost target add local)."""
    with open_vault(ctx) as vault:
        targets.add_local_target(vault, name, path, accel=accel, memory_mib=memory_mib)
    out.print(f"added target {name} at {path.absolute()}; check it with: rehost target verify {name}")


@target_app.command("verify")
def verify(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Check compute, storage and networks before anything fails over to the target."""
    with open_vault(ctx) as vault:
        report = targets.verify_target(vault, name)
    if as_json:
        emit_json({"ok": report.ok, "checks": [vars(c) for c in report.checks]})
    else:
        for c in report.checks:
            out.print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:10} {c.detail}", highlight=False)
    if not report.ok:
        err.print(f"rehost: error: target {name} failed verification: {report.failures()}", markup=False)
        raise typer.Exit(InvalidState.exit_code)


@target_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List targets and their last verification."""
    with open_vault(ctx) as vault:
        rows = targets.list_targets(vault)
    data: list[dict[str, Any]] = [
        {"name": t.name, "kind": t.kind, "settings": t.settings, "verified_ok": t.verified_ok,
         "verified_at": t.verified_at, "networks": [n.name for n in targets.provider(t).networks()]}
        for t in rows
    ]
    if as_json:
        emit_json(data)
        return
    for d in data:
        v = {None: "never verified", True: "verified", False: "FAILED verification"}[d["verified_ok"]]
        where = d["settings"].get("path") or d["settings"].get("resource_group") or ""
        listing(f"{d['name']:16} {d['kind']:6} {v:20} networks: {', '.join(d['networks'])}",
                f"at {where}" if where else "")
