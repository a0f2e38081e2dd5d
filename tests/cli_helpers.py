"""Running the real ``rehost`` command from tests, in-process or as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REHOST = [sys.executable, "-m", "rehost.cli.main"]
#: on the PostgreSQL tier (tests/conftest.py), makes an empty database for ``rehost init``
new_database: Callable[[], str] | None = None


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def rehost(vault: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
           timeout: float = 600) -> Result:
    """Run ``rehost --vault VAULT ARGS`` as a separate process, as a user would."""
    full_env = {**os.environ, "REHOST_VAULT": "", "COLUMNS": "200", **(env or {})}
    full_env.pop("REHOST_PASSWORD", None) if env is None or "REHOST_PASSWORD" not in env else None
    if (new_database is not None and args[:1] == ("init",) and "--database" not in args
            and "--join" not in args and not (env or {}).get("REHOST_DATABASE_URL")):
        full_env["REHOST_DATABASE_URL"] = new_database()  # the tier: a database per vault
    p = subprocess.run([*REHOST, "--vault", str(vault), *args], capture_output=True, text=True,
                       env=full_env, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
    r = Result(p.returncode, p.stdout, p.stderr)
    if check and p.returncode != 0:
        raise AssertionError(f"rehost {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return r


def qemu_img_compare(a: Path, b: Path, fmt_a: str = "raw", fmt_b: str | None = None) -> bool:
    """The independent oracle: does qemu-img see the same guest-visible bytes?"""
    cmd = ["qemu-img", "compare", "-q", "-f", fmt_a]
    if fmt_b:
        cmd += ["-F", fmt_b]
    p = subprocess.run([*cmd, str(a), str(b)], capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise AssertionError(f"qemu-img compare failed: {p.stderr}")
    return p.returncode == 0


def index_files(vault: Path) -> int:
    """Index files in a vault's local repository (temp files, dot-named, left out): what a
    cycle killed half way leaves for its rerun of the packs it stored (design §3: packs, then
    their index, one file for every four packs while a cycle runs)."""
    return sum(1 for p in (vault / "repo" / "index").glob("*") if p.is_file() and not p.name.startswith("."))
