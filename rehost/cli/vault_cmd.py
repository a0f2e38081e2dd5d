"""rehost init | check | prune: the vault and its repository as a whole."""

from __future__ import annotations

import typer

from rehost.cli.context import (
    byte_progress,
    emit_json,
    err,
    human,
    open_vault,
    options,
    out,
    password_from_env_or_prompt,
    record_command,
)
from rehost.errors import IntegrityError
from rehost.jobs import leases
from rehost.replication.retention import RetentionPolicy, parse_duration
from rehost.repository.check import check
from rehost.vault import point_records
from rehost.vault.protection import prune_vault
from rehost.vault.vault import Vault, database_url


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("check")(check_cmd)
    app.command("prune")(prune_cmd)


def init(
    ctx: typer.Context,
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt the repository (AES-256-GCM); "
                                 "the password comes from $REHOST_PASSWORD or a prompt."),
    database: str | None = typer.Option(
        None, "--database", envvar="REHOST_DATABASE_URL", metavar="URL",
        help="Keep the state in PostgreSQL (postgresql://USER@HOST[:PORT]/DB, an empty database) "
        "instead of a SQLite file in the folder, so many hosts can share the vault. No password "
        "in the URL (vault.json is shared): it comes from PGPASSWORD, ~/.pgpass or "
        "$REHOST_DATABASE_PASSWORD on each host."),
    repository: str | None = typer.Option(
        None, "--repository", metavar="URL",
        help="Keep the replica repository in an object store instead of the folder: "
        "s3://BUCKET/PREFIX[?endpoint=URL&region=R] (keys from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY) or azure://CONTAINER/PREFIX[?account_url=URL] (key from "
        "AZURE_STORAGE_KEY, a SAS or a connection string). The bucket or container must exist."),
    broker: str | None = typer.Option(
        None, "--broker", metavar="URL",
        help="Send jobs to rehost worker processes over this Celery broker (redis://HOST:PORT/N) "
        "instead of running them in the command that starts them."),
    join: bool = typer.Option(
        False, "--join", help="Make a folder for another host or worker of an existing fleet vault "
        "(same --database, --repository, --broker): it holds only that host's caches."),
) -> None:
    """Create a vault: state database and replica repository in one folder."""
    path = options(ctx).vault_path
    database = database or None  # an empty REHOST_DATABASE_URL means the default
    if database is not None:
        database_url(database)  # a bad URL is refused before the password prompt
    password = password_from_env_or_prompt(confirm=not join) if encrypt else None
    vault = Vault.init(path, password=password, database=database, repository=repository or None,
                       broker=broker or None, join=join)
    where = "" if database is None else f", state in {vault.database}"
    where += f", repository {vault.repo.storage.location}" if repository else ""
    where += f", jobs through {broker.split('@')[-1]}" if broker else ""
    record_command(ctx, vault, None)  # the database URL's password is never in it (refused above)
    vault.close()
    out.print(("joined vault " if join else "created vault ") + f"{path}"
              + (" (encrypted)" if encrypt else "") + where)


def check_cmd(
    ctx: typer.Context,
    read_data: bool = typer.Option(False, "--read-data", help="Also read and verify every stored byte."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify the repository: every reference, and with --read-data every byte."""
    with (
        open_vault(ctx) as vault,
        leases.reading(vault, [p.id for p in vault.repo.list_points()], "check"),
        byte_progress("reading packs", enabled=read_data and not as_json) as bar,
    ):
        total = 0

        def step(n: int) -> None:
            nonlocal total
            total += n
            bar(total, total)

        report = check(vault.repo, read_data=read_data, progress=step)
        # the database's copy of the point headers (listings, ticks) follows the repository
        synced = point_records.sync(vault)
    if synced.added or synced.removed:
        report.warnings.append(f"point records brought in line with the repository: "
                               f"{synced.added} added, {synced.removed} removed")
    if as_json:
        emit_json({"ok": report.ok, "errors": report.errors, "warnings": report.warnings,
                   "points": report.points, "packs": report.packs, "blobs": report.blobs,
                   "bytes_read": report.bytes_read})
    else:
        for w in report.warnings:
            err.print(f"[yellow]warning:[/] {w}")
        for e in report.errors:
            err.print(f"[red]error:[/] {e}", highlight=False)
        out.print(f"{report.points} points, {report.packs} packs, {report.blobs} blobs"
                  + (f", {human(report.bytes_read)} read" if read_data else "")
                  + (": no errors" if report.ok else f": {len(report.errors)} error(s)"))
    if not report.ok:
        raise typer.Exit(IntegrityError.exit_code)


def prune_cmd(
    ctx: typer.Context,
    retention: str = typer.Option("72h", help="Keep points this long (e.g. 24h, 7d)."),
    all_for: str = typer.Option("2h", help="Keep every point this young."),
    hourly_for: str = typer.Option("24h", help="Then one point per hour up to this age."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Thin recovery points per retention, then delete data no point needs (the only delete),
    and compress what an initial copy stored uncompressed (``rehost serve`` does both on its own)."""
    policy = RetentionPolicy(window=parse_duration(retention), all_for=parse_duration(all_for),
                             hourly_for=parse_duration(hourly_for))
    with open_vault(ctx) as vault:
        r = prune_vault(vault, policy)
    if as_json:
        emit_json(vars(r))
    else:
        out.print(f"removed {r.points_removed} point(s), rewrote {r.points_rewritten}, "
                  f"removed {r.packs_removed} pack(s), repacked {r.packs_repacked}, "
                  f"compressed {r.packs_compressed} ({r.packs_left_as_stored} did not shrink), "
                  f"freed {human(r.bytes_freed)}")
