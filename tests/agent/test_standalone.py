"""The agent installs and runs alone: its modules load none of the server's, and the wheel of
scripts/build-agent, installed on Debian's own Python with Debian's python3-cryptography and
python3-xxhash, registers with a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehost.agent import AGENT_VERSION
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.process import free_port

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")

AGENT_MODULES = {
    "rehost",
    "rehost.fs",
    *(
        f"rehost.agent{m}"
        for m in (
            "",
            ".__main__",
            ".main",
            ".register",
            ".service",
            ".config",
            ".tls",
            ".http",
            ".tracker",
            ".freeze",
            ".inventory",
            ".exports",
        )
    ),
}
# _openssl: the submodule of cryptography's Rust bindings that newer releases register under that name
THIRD_PARTY = {"cryptography", "cffi", "_cffi_backend", "_openssl", "xxhash"}
FORBIDDEN = [
    "fastapi",
    "sqlalchemy",
    "typer",
    "rich",
    "zstandard",
    "blake3",
    "nbd",
    "rehost.cli",
    "rehost.vault",
    "rehost.repository",
    "rehost.api",
    "rehost.agent.pki",
    "rehost.agent.client",
]

# Runs the agent's CLI paths, then prints the modules loaded since start-up (what the
# interpreter's site machinery loaded before is not the agent's doing) and all of them.
PROBE = """
import contextlib, io, json, sys
before = set(sys.modules)
from rehost.agent import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main.main(["--state", sys.argv[1], "inventory"])
assert rc == 0 and json.loads(out.getvalue())["hostname"], out.getvalue()
import rehost.agent.service, rehost.agent.register, rehost.agent.exports
print(json.dumps({"new": sorted(set(sys.modules) - before), "all": sorted(sys.modules)}))
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def loaded_modules(python: str, tmp_path: Path) -> dict[str, list[str]]:
    # cwd away from the checkout: ``python -c`` puts the cwd first on sys.path
    probe = subprocess.run(
        [python, "-c", PROBE, str(tmp_path / "state")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, list[str]] = json.loads(probe.stdout.splitlines()[-1])
    return result


def assert_agent_only(modules: dict[str, list[str]]) -> None:
    loaded = set(modules["all"])
    for name in FORBIDDEN:
        assert not {m for m in loaded if m == name or m.startswith(name + ".")}, f"the agent loaded {name}"
    outside = [
        m
        for m in modules["new"]
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0] not in THIRD_PARTY
        and m not in AGENT_MODULES
    ]
    assert not outside, f"the agent loaded modules outside its allow-list: {outside}"


def test_agent_imports_nothing_of_the_server(tmp_path: Path) -> None:
    # rehost is an editable install of the full package here: what it could import, it may not
    assert_agent_only(loaded_modules(sys.executable, tmp_path))


def _system_python_problem() -> str | None:
    if not SYSTEM_PYTHON.is_file():
        return f"no {SYSTEM_PYTHON}"
    probe = subprocess.run(
        [
            str(SYSTEM_PYTHON),
            "-c",
            "import sys, ensurepip, venv, cryptography, xxhash; assert sys.version_info >= (3, 11)",
        ],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return (
            f"{SYSTEM_PYTHON} lacks Python >= 3.11, python3-venv, python3-cryptography or python3-xxhash "
            f"(run scripts/install): {probe.stderr.strip().splitlines()[-1:]}"
        )
    return None


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_agent_wheel_alone_on_debian_python_registers(
    tmp_path: Path, ca: CertificateAuthority, enrollment: EnrollmentServer
) -> None:
    problem = _system_python_problem()
    if problem:
        pytest.skip(problem)
    built = run([str(REPO / "scripts" / "build-agent"), str(tmp_path / "dist")], cwd=REPO)
    assert built.returncode == 0, built.stderr
    wheel = Path(built.stdout.strip().splitlines()[-1])
    assert wheel.is_file() and wheel.name == f"rehost_agent-{AGENT_VERSION}-py3-none-any.whl"

    venv = tmp_path / "venv"
    made = run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    py, agent = str(venv / "bin" / "python"), str(venv / "bin" / "rehost-agent")
    # with its dependencies, offline: Debian's packages must satisfy what the wheel declares
    installed = run([py, "-m", "pip", "install", "-q", "--no-index", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    version = run([agent, "--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == AGENT_VERSION, version

    # only the agent was shipped, and its dependencies are Debian's
    for module in ("rehost.agent.pki", "rehost.agent.client", "rehost.cli", "rehost.vault"):
        assert run([py, "-c", f"import {module}"], cwd=tmp_path).returncode != 0, f"{module} was shipped"
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    shipped = {p.name.lower() for p in Path(site.stdout.strip()).iterdir()}
    assert not {n for n in shipped if n.startswith(("fastapi", "sqlalchemy", "typer", "rich", "zstandard"))}
    origins = run([py, "-c", "import cryptography as c, xxhash as x; print(c.__file__, x.__file__)"], venv)
    assert origins.returncode == 0 and str(venv) not in origins.stdout, origins
    assert_agent_only(loaded_modules(py, tmp_path))

    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    state = tmp_path / "agent-state"
    passphrase = ca.issue_passphrase("physical01")
    registered = run(
        [
            agent,
            "--state",
            str(state),
            "register",
            "--server",
            enrollment.url,
            "--passphrase",
            passphrase,
            "--fingerprint",
            ca.server_fingerprint,
            "--disk",
            str(disk),
            "--listen",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--nbd-port",
            str(free_port()),
        ],
        cwd=tmp_path,
    )
    assert registered.returncode == 0, registered.stderr
    assert "registered as physical01" in registered.stdout
    machine = ca.machine("physical01")
    assert machine is not None, ca.machines()
    assert (state / "config.json").is_file() and (state / "tls" / "server-cert.pem").is_file()
    assert str(disk) in json.dumps(machine["inventory"]), machine["inventory"]

    inventory = run([agent, "--state", str(state), "inventory"], cwd=tmp_path)
    assert inventory.returncode == 0, inventory.stderr
    assert str(disk) in inventory.stdout
