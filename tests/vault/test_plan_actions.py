"""A plan's script actions: they see the plan's context, their output is kept (cut), a
failure or a timeout fails with the script's name and output, and a timeout kills the
script's children too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rehost.vault import plan_actions
from rehost.vault.plan_actions import ActionFailed, run_script


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "action.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_context_and_output(tmp_path: Path) -> None:
    script = _script(tmp_path, 'echo "$REHOST_PLAN/$REHOST_GROUP"; cat "$REHOST_PLAN_CONTEXT"\n')
    context = {"machines": [{"name": "db", "target": "mem", "point": "p1"}]}
    r = run_script(script, plan="shop", group=2, context=context, timeout_s=10)
    first, rest = r.output.split("\n", 1)
    assert first == "shop/2" and json.loads(rest) == context


def test_output_is_cut_to_its_end(tmp_path: Path) -> None:
    script = _script(tmp_path, "seq 1 5000; echo LAST\n")
    r = run_script(script, plan="p", group=1, context={}, timeout_s=10)
    assert r.output.startswith("[... ") and r.output.endswith("LAST\n")
    assert len(r.output) < plan_actions.OUTPUT_LIMIT + 100


def test_failure_names_script_and_output(tmp_path: Path) -> None:
    script = _script(tmp_path, "echo cannot reach db >&2; exit 3\n")
    with pytest.raises(ActionFailed, match=r"action.sh of group 1 failed \(exit code 3\).*cannot reach db"):
        run_script(script, plan="p", group=1, context={}, timeout_s=10)
    with pytest.raises(ActionFailed, match="could not start"):
        run_script(str(tmp_path / "missing"), plan="p", group=1, context={}, timeout_s=10)


def test_timeout_kills_the_script_and_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    script = _script(tmp_path, f"echo started; (sleep 3; touch {marker}) & sleep 30\n")
    started = time.monotonic()
    with pytest.raises(ActionFailed, match=r"did not finish in 1s and was killed; its output: started"):
        run_script(script, plan="p", group=1, context={}, timeout_s=1)
    assert time.monotonic() - started < 5
    time.sleep(3.5)
    assert not marker.exists()
