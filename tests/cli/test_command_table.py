"""``rehost.cli.main.COMMANDS`` names, for every top-level command, the module that registers it:
a command line imports only that module (start-up time, issue 17). The table must say exactly
what the modules register, or a command would be missing from the line that names it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer

from rehost.cli import main


def _names(app: typer.Typer) -> set[str]:
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    groups = {g.name or g.typer_instance.info.name for g in app.registered_groups if g.typer_instance}
    return commands | {str(g) for g in groups}


def test_the_table_names_what_each_module_registers() -> None:
    for module in set(main.COMMANDS.values()):
        app = typer.Typer()
        importlib.import_module(f"rehost.cli.{module}").register(app)
        assert _names(app) == {c for c, m in main.COMMANDS.items() if m == module}, module


def test_a_command_line_imports_only_its_own_commands_module() -> None:
    """``rehost --vault V replicate --help`` runs without importing another command's module;
    ``rehost --help`` loads every one (it lists them)."""
    probe = (
        "import sys; from rehost.cli.main import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.endswith('_cmd')))"
    )
    one = subprocess.run([sys.executable, "-c", probe, "--vault", "v", "replicate", "--help"],
                         capture_output=True, text=True, check=True)
    loaded = one.stdout.strip().splitlines()[-1]
    assert "machine_cmd" in loaded and "source_cmd" not in loaded and "demo_cmd" not in loaded, loaded
    assert "plan_cmd" not in loaded, loaded
    assert "--policy" in one.stdout
    every = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True,
                           check=True)
    assert "replicate" in every.stdout and "readiness" in every.stdout
    loaded = every.stdout.strip().splitlines()[-1]
    assert all(f"rehost.cli.{m}" in loaded for m in main.COMMANDS.values()), loaded
