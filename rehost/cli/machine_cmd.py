"""rehost machines | replicate | points | export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rehost.cli.context import (
    byte_progress,
    emit_json,
    human,
    listing,
    open_vault,
    out,
    short_time,
)
from rehost.vault import cycles, inventory, policies, protection, targets
from rehost.vault.export import export_disk
from rehost.vault.overview import machine_views


def register(app: typer.Typer) -> None:
    app.command("machines")(machines)
    app.command("replicate")(replicate)
    app.command("points")(points)
    app.command("export")(export)


def machines(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List machines with their source, state and latest recovery point."""
    with open_vault(ctx) as vault:
        data = machine_views(vault)
    if as_json:
        emit_json(data)
        return
    if not data:
        out.print("no machines yet: rehost source add image NAME DISK...")
    for d in data:
        h = d["health"]
        agent = d["agent"] or {}
        seen = ""
        if agent:
            seen = f"agent seen {agent.get('seen') or 'never'}"
            seen += f" ({agent['error']})" if agent.get("error") else ""
        listing(f"{d['name']:20} {d['source']:8} {d['state']:20} points={d['points']:<4} "
                f"latest {short_time(d['latest_time'])}  {h['status']}",
                h["reason"], f"runs on {d['target']} ({d['runs_at']})" if d["runs_at"] else "", seen)


def replicate(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Machine to replicate."),
    target: str = typer.Option(None, help="Target this machine fails over to (remembered)."),
    network_map: list[str] = typer.Option(
        [], "--network-map", help="SOURCE=TARGET network pairs (remembered); an image's network is "
        "'default'; the target's networks: rehost target list (local: production, isolated, none)."),
    policy: str = typer.Option(None, help="Attach this replication policy (for rehost serve)."),
    app_consistent: bool = typer.Option(False, "--app-consistent", help="Freeze the guest's file systems."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run one replication cycle: a full copy first, then only changed blocks. Prints the point id."""
    with open_vault(ctx) as vault:
        if policy:
            policies.attach(vault, name, policy)
        if target or network_map:
            mapping = targets.parse_network_map(network_map)
            machine = inventory.get_machine(vault, name)
            targets.assign(vault, machine, targets.target_of(vault, machine, target), mapping)
        with byte_progress(f"replicating {name}", enabled=not as_json) as bar:
            r = cycles.replicate_job(vault, name, bar, app_consistent=app_consistent)
    s = r.stats
    if as_json:
        emit_json(cycles.cycle_summary(r))
        return
    out.print(r.point.id)
    typer.echo(f"read {human(r.bytes_read)}, changed {human(r.changed_bytes)}, "
               f"stored {human(s.stored_bytes)} in {r.seconds:.1f}s", err=True)
    for note in r.notes:  # what the source fell back on or found changed (a re-exported OVA)
        typer.echo(f"note: {note}", err=True)
    if r.replica:
        typer.echo(("" if r.replica["state"] == "succeeded" else "warning: ") + r.replica["detail"], err=True)


def points(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """List a machine's recovery points, oldest first."""
    with open_vault(ctx) as vault:
        pts = protection.list_points(vault, name)
    data: list[dict[str, Any]] = [
        {"id": p.id, "time": p.time, "consistency": p.consistency.value, "sequence": p.sequence,
         "disks": [{"index": d.index, "size": d.size, "full": d.full} for d in p.disks]}
        for p in pts
    ]
    if as_json:
        emit_json(data)
        return
    if not data:
        out.print(f"{name} has no recovery points yet")
    for d in data:
        out.print(f"{d['id'][:12]}  {d['time']}  {d['consistency']}")


def export(
    ctx: typer.Context,
    name: str,
    point: str = typer.Option("latest", help="latest, latest-app-consistent or a point id."),
    disk: int = typer.Option(0, help="Disk index (see: rehost machines)."),
    output: Path = typer.Option(..., help="File to create (never overwritten)."),
    fmt: str = typer.Option("raw", "--format", help="raw or qcow2."),
) -> None:
    """Write one disk of a recovery point to an image file."""
    with open_vault(ctx) as vault, byte_progress(f"exporting {name} disk {disk}") as bar:
        path = export_disk(vault, name, point, disk, output, fmt, bar)
    out.print(f"wrote {path}")
