"""The ``rehost`` command: one module per command group, errors handled here only."""

from __future__ import annotations

import gc
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from rehost.cli import api_client
from rehost.cli.context import Options, err
from rehost.errors import RehostError

#: the module that registers each top-level command, in the order ``rehost --help`` lists
#: them. A command line imports only its own command's module: every scheduled
#: ``rehost replicate`` pays its start-up (issue 17), and the other fourteen modules pull in
#: guest inspection, OVF, Azure, Hyper-V... A test keeps this table equal to what the modules
#: register.
COMMANDS: dict[str, str] = {
    "init": "vault_cmd", "check": "vault_cmd", "prune": "vault_cmd",
    "machines": "machine_cmd", "replicate": "machine_cmd", "points": "machine_cmd",
    "export": "machine_cmd", "source": "source_cmd",
    "target": "target_cmd",
    "failover": "failover_cmd", "complete": "failover_cmd", "serve-point": "failover_cmd",
    "probe": "probe_cmd",
    "jobs": "job_cmd", "job": "job_cmd",
    "demo": "demo_cmd",
    "serve": "policy_cmd", "policy": "policy_cmd",
    "token": "token_cmd",
    "worker": "worker_cmd",
    "plan": "plan_cmd",
    "readiness": "readiness_cmd",
    "audit": "audit_cmd",
    "report": "report_cmd",
    "config": "config_cmd",
}


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


_registered: set[str] = set()


def _register(modules: Sequence[str]) -> typer.Typer:
    for name in modules:
        if name not in _registered:
            importlib.import_module(f"rehost.cli.{name}").register(app)
            _registered.add(name)
    return app


def full_app() -> typer.Typer:
    """The app with every command (help, tests that drive it with Typer's runner)."""
    return _register(list(dict.fromkeys(COMMANDS.values())))


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app with the command ``args`` names registered; all of them for help or a name
    that is not a command (Typer then says so)."""
    words = iter(args)
    for word in words:
        if word == "--vault":
            next(words, None)
        elif not word.startswith("-"):
            return _register([COMMANDS[word]]) if word in COMMANDS else full_app()
    return full_app()


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
        chosen = api_client.remote_app if api_client.wants_server(args) else app_for(args)
        chosen(args=args, prog_name="rehost")
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


def run() -> None:
    """The ``rehost`` process: ``main`` between two ``gc.freeze()`` calls.

    The objects the imports made (SQLAlchemy's, Typer's: hundreds of thousands) never become
    garbage, yet every full collection during a cycle walks them, and so does the collection
    at interpreter exit: 0.1–0.25 s of a ``rehost replicate`` that changes nothing
    (docs/benchmarks.md, issue 17). Frozen, they are skipped; what the command allocates is
    still collected. Only here, in a process of its own: tests call ``main`` many times in one
    process, where freezing would keep their garbage forever."""
    gc.freeze()
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
