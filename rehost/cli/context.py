"""What every command shares: which vault, how to unlock it, how to print."""

from __future__ import annotations

import getpass
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from rehost.errors import UsageError
from rehost.units import human as human  # re-exported: the commands format bytes through here
from rehost.vault import audit
from rehost.vault.vault import Vault

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich ``Console`` made on first use. Importing rich is 30-40 ms of every command's
    start-up (issue 17: a 1 % delta's whole command takes 0.7 s), and a command that prints
    JSON for a script (``--json``) never draws with it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._made: Console | None = None

    @property
    def console(self) -> Console:
        if self._made is None:
            from rich.console import Console

            self._made = Console(**self._options)
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


# soft_wrap: long lines stay whole in logs and pipes (rich would cut them at 80 columns)
# emoji=False: ":CD:" in a certificate fingerprint must not become a picture of a disc
err = cast("Console", _LazyConsole(stderr=True, soft_wrap=True, emoji=False))
out = cast("Console", _LazyConsole(soft_wrap=True, emoji=False))


def real_console(console: Console) -> Console:
    """The ``Console`` behind ``err`` or ``out``, for rich's own classes (a progress bar)."""
    return console.console if isinstance(console, _LazyConsole) else console


@dataclass
class Options:
    vault_path: Path


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def password_from_env_or_prompt(*, confirm: bool = False) -> str:
    """``$REHOST_PASSWORD`` first (never logged), then an interactive prompt."""
    pw = os.environ.get("REHOST_PASSWORD")
    if pw is not None:
        if not pw:
            raise UsageError("REHOST_PASSWORD is set but empty")
        return pw
    if not sys.stdin.isatty():
        raise UsageError("the vault is encrypted: set REHOST_PASSWORD or run in a terminal")
    pw = getpass.getpass("vault password: ")
    if confirm and getpass.getpass("again: ") != pw:
        raise UsageError("the passwords do not match")
    if not pw:
        raise UsageError("an empty password is not allowed")
    return pw


#: commands that change nothing, so the audit log does not record them; any other command is
#: recorded (a new command is audited unless it is added here)
READ_ONLY = frozenset({
    "machines", "points", "jobs", "check", "readiness", "serve", "worker", "audit", "report",
    "source kinds", "target kinds", "target list", "probe list", "policy list", "token list",
    "plan show", "plan list", "config show",
})


@contextmanager
def open_vault(ctx: typer.Context) -> Iterator[Vault]:
    """The command's vault; a state-changing command leaves an entry in its audit log, with the
    local user as the actor and the command's outcome."""
    vault = Vault.open(options(ctx).vault_path, password_from_env_or_prompt)
    try:
        try:
            yield vault
        except BaseException as e:
            record_command(ctx, vault, e)
            raise
        record_command(ctx, vault, None)
    finally:
        vault.close()


def command_name(ctx: typer.Context) -> str:
    return ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else ctx.command_path


def record_command(ctx: typer.Context, vault: Vault, error: BaseException | None) -> None:
    """One entry per command run (a command may open its vault more than once)."""
    name = command_name(ctx)
    params = {k: v for k, v in ctx.params.items() if k != "as_json" and v not in (None, False, (), [])}
    if name == "job" and params.get("what") not in ("resume", "cancel"):
        return
    if name in READ_ONLY or ctx.meta.get("rehost.audited"):
        return
    ctx.meta["rehost.audited"] = True
    failed = error is not None and not (isinstance(error, typer.Exit) and error.exit_code == 0)
    subject = params.get("name") or params.get("machine") or params.get("job_id") or ""
    detail = ("interrupted" if isinstance(error, KeyboardInterrupt)
              else str(error) if failed and not isinstance(error, typer.Exit) else "")
    try:
        audit.record(vault, f"rehost {name}", object=str(subject), params=params,
                     result="error" if failed else "ok", detail=detail)
    except Exception as e:  # the command's own outcome (or error) matters more than its record
        if error is None:
            raise
        err.print(f"rehost: warning: the audit log could not record this command: {e}", highlight=False,
                  markup=False)


#: listings fit a terminal this wide (issue 18): an entry's line is cut, its details wrapped
WIDTH = 100


def clip(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def wrapped(text: str, indent: str = "    ", width: int = WIDTH, *, hanging: str | None = None) -> list[str]:
    """``text`` in lines of at most ``width``: the first after ``indent``, the others after
    ``hanging`` (default: two spaces deeper). Long words are broken."""
    rest = indent + "  " if hanging is None else hanging
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=rest,
                         break_long_words=True, break_on_hyphens=False) or [indent.rstrip()]


def print_wrapped(text: str, indent: str = "", *, hanging: str | None = None) -> None:
    for line in wrapped(text, indent, hanging=hanging):
        out.print(line, highlight=False, markup=False)


def listing(first: str, *details: str) -> None:
    """One entry of a listing: its line, cut to ``WIDTH``, and each detail wrapped beneath it."""
    out.print(clip(first), highlight=False, markup=False)
    for d in details:
        if d:
            for line in wrapped(d):
                out.print(line, highlight=False, markup=False)


def short_time(iso: str | None) -> str:
    """``2026-12-05T18:41:55.781047Z`` -> ``2026-12-05 18:41:55``: seconds are enough to read."""
    return iso[:19].replace("T", " ") if iso else "never"


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def byte_progress(description: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar for byte counts; a no-op callback when disabled."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TimeRemainingColumn(), console=real_console(err), transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update

