"""rehost policy create | update | list | attach, and rehost serve (continuous replication)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from rehost.cli.context import (
    emit_json,
    err,
    listing,
    open_vault,
    options,
    out,
    password_from_env_or_prompt,
)
from rehost.vault import policies
from rehost.vault.scheduler import Scheduler, default_workers

policy_app = typer.Typer(
    help="Replication policies: RPO, retention, consistency, bandwidth.", no_args_is_help=True
)

RPO = typer.Option(None, "--rpo-threshold", help="Warn when the newest point is older (e.g. 5m).")
RETENTION = typer.Option(None, "--retention", help="How long recovery points are kept (e.g. 24h).")
APP = typer.Option(None, "--app-consistent-every", help="App-consistent point interval (e.g. 1h; 0: never).")
CRASH = typer.Option(None, "--crash-consistent-every", help="Crash-consistent point interval (e.g. 30s).")
BANDWIDTH = typer.Option(
    None, "--bandwidth", help="Limit on what a cycle reads from the source and writes (e.g. 100MB/s; none)."
)
WINDOW = typer.Option(
    None,
    "--bandwidth-window",
    metavar="SPEC",
    help="Another limit at some hours, --bandwidth at the others (repeatable; the first window that "
    "matches wins): [DAYS] HH:MM-HH:MM=RATE, e.g. 'mon-fri 08:00-18:00=10MB/s', 'sat,sun 00:00-24:00=none', "
    "'22:00-06:00=50MB/s', in the server's local time. On update it replaces the schedule; 'none' clears it.",
)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
    app.command("serve")(serve)


@policy_app.command("create")
def create(
    ctx: typer.Context,
    name: str,
    rpo_threshold: str = RPO,
    retention: str = RETENTION,
    app_every: str = APP,
    crash_every: str = CRASH,
    bandwidth: str = BANDWIDTH,
    bandwidth_window: list[str] | None = WINDOW,
) -> None:
    """Create a policy (defaults: RPO 5m, retention 24h, crash-consistent every 30s)."""
    with open_vault(ctx) as vault:
        p = policies.create_policy(
            vault,
            name,
            rpo_threshold=rpo_threshold,
            retention=retention,
            app_every=app_every,
            crash_every=crash_every,
            bandwidth=bandwidth,
            bandwidth_schedule=bandwidth_window or None,
        )
    out.print(f"created policy {p.name}", highlight=False)


@policy_app.command("update")
def update(
    ctx: typer.Context,
    name: str,
    rpo_threshold: str = RPO,
    retention: str = RETENTION,
    app_every: str = APP,
    crash_every: str = CRASH,
    bandwidth: str = BANDWIDTH,
    bandwidth_window: list[str] | None = WINDOW,
) -> None:
    """Change a policy; running replication picks it up at its next tick."""
    with open_vault(ctx) as vault:
        policies.update_policy(
            vault,
            name,
            rpo_threshold=rpo_threshold,
            retention=retention,
            app_every=app_every,
            crash_every=crash_every,
            bandwidth=bandwidth,
            bandwidth_schedule=bandwidth_window or None,
        )
    out.print(f"updated policy {name}", highlight=False)


@policy_app.command("attach")
def attach(ctx: typer.Context, machine: str, policy: str) -> None:
    """Replicate MACHINE continuously under POLICY (with rehost serve)."""
    with open_vault(ctx) as vault:
        policies.attach(vault, machine, policy)
    out.print(f"{machine} now replicates under policy {policy}", highlight=False)


@policy_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    with open_vault(ctx) as vault:
        data = [policies.policy_json(p) for p in policies.list_policies(vault)]
    if as_json:
        emit_json(data)
        return
    for d in data:
        bw = f"{d['bandwidth_bps'] / 1e6:g}MB/s" if d["bandwidth_bps"] else "unlimited"  # as given
        t = policies.duration_text
        app = t(d["app_consistent_every_s"]) if d["app_consistent_every_s"] else "never"
        listing(f"{d['name']:16} rpo {t(d['rpo_threshold_s']):5} retention {t(d['retention_s']):6} "
                f"crash every {t(d['crash_consistent_every_s']):5} app every {app:5} bandwidth {bw}",
                *(f"in window {w}" for w in d["bandwidth_schedule"]))


def serve(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Run one scheduling pass and exit."),
    tick: float = typer.Option(1.0, help="Seconds between scheduling passes."),
    listen: str = typer.Option(
        "127.0.0.1:8080", help="Where the API and dashboard listen (HOST:PORT); 'off': replication only."
    ),
    cert: Path = typer.Option(None, help="TLS certificate (PEM): serve HTTPS."),
    key: Path = typer.Option(None, help="TLS private key (PEM), when it is not in --cert."),
    enroll_listen: str = typer.Option(
        None, help="Where agents register (HOST:PORT, HTTPS); default 0.0.0.0:8744 with the API, "
        "'off' to refuse registrations."
    ),
    workers: int = typer.Option(
        None, min=1, max=256, help="Cycles of different machines run at once (default: two per CPU core)."
    ),
) -> None:
    """Keep every machine with a policy within its RPO (replicate, thin, report health), and
    serve the REST API and dashboard."""

    def log(msg: str) -> None:
        err.print(f"{datetime.now(UTC):%H:%M:%S} {msg}", highlight=False, markup=False)

    from rehost.sources import credentials

    credentials.no_prompts()  # an API request or a scheduled cycle must not wait on this terminal
    workers = workers or default_workers()
    if once:
        with open_vault(ctx) as vault:
            scheduler = Scheduler(vault, log=log, workers=workers)
            try:
                scheduler.tick()
            finally:
                scheduler.close()
        return
    from rehost.portal.server import serve as serve_portal

    serve_portal(options(ctx).vault_path, password_from_env_or_prompt,
                 listen=None if listen == "off" else listen, cert=cert, key=key, tick=tick, log=log,
                 enroll_listen=enroll_listen, workers=workers)
