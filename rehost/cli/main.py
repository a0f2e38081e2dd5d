"""The ``rehost`` command: one module per command group, errors handled here only."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer

from rehost.cli import (
    api_client,
    audit_cmd,
    config_cmd,
    demo_cmd,
    failover_cmd,
    job_cmd,
    machine_cmd,
    plan_cmd,
    policy_cmd,
    probe_cmd,
    readiness_cmd,
    report_cmd,
    target_cmd,
    token_cmd,
    vault_cmd,
    worker_cmd,
)
from rehost.cli.context import Options, err
from rehost.errors import RehostError


def _plain_help_types() -> None:
    """Typer 0.29 prints a type after every option, ``<bool>`` after each flag included; a flag
    takes no value, so show none, and show other types the way help texts usually name them
    (``TEXT``, ``PATH``, ``INT``), not as ``<str>``."""
    core = getattr(typer, "core", None)
    for cls_name in ("TyperOption", "TyperArgument"):
        cls = getattr(core, cls_name, None)
        original = getattr(cls, "display_type_rich", None)
        if cls is None or original is None or getattr(original, "_rehost", False):
            continue
        cls.display_type_rich = _plain(original)


def _plain(original: Any) -> Any:
    def display_type_rich(self: Any, ctx: typer.Context) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        shown = original(self, ctx)
        if not isinstance(shown, str) or self.metavar is not None:
            return shown  # type: ignore[no-any-return]
        return shown.strip("<>").replace("str", "text").upper()

    display_type_rich._rehost = True  # type: ignore[attr-defined]
    return display_type_rich


_plain_help_types()

app = typer.Typer(
    name="rehost",
    help="Move and protect whole servers by block-level replication. To drive a remote "
    "rehost serve instead: rehost --server URL --token T machines|points|replicate|failover|"
    "complete|jobs|job.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    vault: Path = typer.Option(
        None, "--vault", envvar="REHOST_VAULT", show_envvar=True,
        help="Vault folder (default: $REHOST_VAULT, then ./rehost-vault).",
    ),
) -> None:
    ctx.obj = Options(vault_path=vault or Path("rehost-vault"))


vault_cmd.register(app)
machine_cmd.register(app)
target_cmd.register(app)
failover_cmd.register(app)
probe_cmd.register(app)
job_cmd.register(app)
demo_cmd.register(app)
policy_cmd.register(app)
token_cmd.register(app)
worker_cmd.register(app)
plan_cmd.register(app)
readiness_cmd.register(app)
audit_cmd.register(app)
report_cmd.register(app)
config_cmd.register(app)


#: what ``rehost`` alone prints: the lifecycle, one line per step, then where the rest is
LIFECYCLE = """\
1. rehost init; rehost target add local NAME --path DIR; rehost target verify NAME
2. rehost source add image|qemu|physical|vsphere NAME ...      (kinds: rehost source kinds)
3. rehost policy create P; rehost replicate NAME --policy P; rehost serve   (keeps the RPO)
4. rehost failover NAME --test, then --cleanup; rehost failover NAME --shutdown-source
5. rehost complete NAME; rehost report NAME                  (every command: rehost --help)
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error is one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        sys.stdout.write(LIFECYCLE)
        return 0
    try:
        (api_client.remote_app if api_client.wants_server(args) else app)(args=args, prog_name="rehost")
        return 0
    except SystemExit as e:  # typer's standalone mode ends every run with SystemExit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except RehostError as e:
        if not e.user_error or os.environ.get("REHOST_DEBUG"):
            traceback.print_exc()
        err.print(f"rehost: error: {e}", highlight=False, markup=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("rehost: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
