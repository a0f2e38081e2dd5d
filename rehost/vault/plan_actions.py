"""Running a plan's script actions on the rehost host (issue 15).

A script learns where it is in the plan from REHOST_PLAN and REHOST_GROUP, and what has failed
over so far from a JSON file named by REHOST_PLAN_CONTEXT (each machine's name, target, the
placement and point), so "update the web servers' connection string" needs no hard-coded
address. Its output is kept, cut to ``OUTPUT_LIMIT`` bytes, so the job shows what it said
without a chatty script bloating the database; a script that outlives its timeout is killed
with everything it started (its own process group) and fails the step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rehost.errors import RehostError

OUTPUT_LIMIT = 4096


class ActionFailed(RehostError):
    """A script action ended badly; the message names the script, why, and its last output."""


@dataclass(frozen=True)
class ScriptResult:
    returncode: int
    output: str
    seconds: float


def _cut(data: bytes) -> str:
    """The end of the output (where errors are), marked when cut."""
    text = data.decode("utf-8", "replace")
    if len(data) <= OUTPUT_LIMIT:
        return text
    tail = data[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    return f"[... {len(data) - OUTPUT_LIMIT} bytes cut ...]\n{tail}"


def run_script(script: str, *, plan: str, group: int, context: dict[str, Any],
               timeout_s: float) -> ScriptResult:
    """Run SCRIPT with the plan's context; raise ActionFailed when it cannot start, exits
    non-zero or times out (killed, with its children)."""
    return run_with_context(script, f"script {script} of group {group}",
                            {"REHOST_PLAN": plan, "REHOST_GROUP": str(group)},
                            context, "REHOST_PLAN_CONTEXT", timeout_s)


def run_with_context(script: str, label: str, env_extra: dict[str, str], context: dict[str, Any],
                     context_var: str, timeout_s: float) -> ScriptResult:
    """Run SCRIPT with ``env_extra`` and the JSON ``context`` in a file named by
    ``context_var``; ``label`` names it in errors (a plan's action, a machine's check)."""
    with tempfile.TemporaryDirectory(prefix="rehost-script-") as tmp:
        context_file = Path(tmp) / "context.json"
        context_file.write_text(json.dumps(context, indent=2, default=str))
        env = {**os.environ, **env_extra, context_var: str(context_file)}
        started = time.monotonic()
        try:
            proc = subprocess.Popen([script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            raise ActionFailed(f"{label} could not start: {e.strerror or e}") from e
        try:
            data, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            data, _ = proc.communicate()
            raise ActionFailed(
                f"{label} did not finish in {timeout_s:g}s and was killed; "
                f"its output: {_cut(data).strip() or '(none)'}"
            ) from None
        seconds = time.monotonic() - started
        output = _cut(data)
        if proc.returncode != 0:
            raise ActionFailed(
                f"{label} failed (exit code {proc.returncode}); its output: {output.strip() or '(none)'}"
            )
        return ScriptResult(proc.returncode, output, seconds)
