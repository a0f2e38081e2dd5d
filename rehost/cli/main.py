"""The ``rehost`` command: one module per command group, errors handled here only."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer

from rehost.cli import (
    api_client,
    demo_cmd,
    failover_cmd,
    job_cmd,
    machine_cmd,
    policy_cmd,
    target_cmd,
    token_cmd,
    vault_cmd,
)
from rehost.cli.context import Options, err
from rehost.errors import RehostError

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
job_cmd.register(app)
demo_cmd.register(app)
policy_cmd.register(app)
token_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error is one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
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
