"""``rehost.cli.main.COMMANDS`` names, for every top-level command, the module that registers it:
a command line imports only that module (start-up time, issue 17). The table must say exactly
what the modules register, or a command would be missing from the line that names it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

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


def test_a_replicate_of_an_image_loads_no_agent_tls(tmp_path: Path) -> None:
    """Agents' TLS is for agents: the X.509 stack cost ~20 ms of every ``rehost replicate``
    when the agent CA's store loaded it for its file helpers (issue 17). (``ssl`` itself comes
    with SQLAlchemy, through asyncio.)"""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\1" * 65536)
    vault = tmp_path / "vault"
    probe = (
        "import sys; from rehost.cli.main import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m in ('rehost.agent.tls', 'cryptography.x509')))"
    )
    for args in (["init"], ["source", "add-image", "m", str(image)]):
        subprocess.run([sys.executable, "-m", "rehost.cli.main", "--vault", str(vault), *args],
                       capture_output=True, text=True, check=True)
    r = subprocess.run([sys.executable, "-c", probe, "--vault", str(vault), "replicate", "m", "--json"],
                       capture_output=True, text=True, check=True)
    assert '"changed_bytes": 65536,' in r.stdout, r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
