"""Reading a boot marker off a serial console that QEMU is still writing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rehost.errors import InvalidState
from rehost.targets.local import LocalSettings, LocalTarget
from rehost.vault.failover import DEFAULT_BOOT_MARKER


def _target(tmp_path: Path, text: str, running: list[bool]) -> LocalTarget:
    t = LocalTarget(LocalSettings(tmp_path))
    t.vm_dir("vm").mkdir(parents=True)
    t.console_log("vm").write_text(text)
    t.running = lambda vm: running[0]  # type: ignore[method-assign]  # the VM process itself
    return t


def test_a_half_written_line_is_waited_for(tmp_path: Path) -> None:
    t = _target(tmp_path, "[ 3.0] EXT4-fs mounted\nREHOST-BOOT-OK mark", [True])

    def rest() -> None:
        time.sleep(0.4)
        with open(t.console_log("vm"), "a") as f:
            f.write("er=v2\nREHOST-READY\n")

    threading.Thread(target=rest).start()
    assert t.wait_for_console("vm", DEFAULT_BOOT_MARKER, 10) == "REHOST-BOOT-OK marker=v2"


def test_a_prompt_without_newline_counts_once_it_settles(tmp_path: Path) -> None:
    t = _target(tmp_path, "Welcome\nlogin:", [True])
    t0 = time.monotonic()
    assert t.wait_for_console("vm", DEFAULT_BOOT_MARKER, 10) == "login:"
    assert 0.9 < time.monotonic() - t0 < 5


def test_a_stopped_vm_gives_what_it_wrote_or_says_why(tmp_path: Path) -> None:
    assert _target(tmp_path / "a", "REHOST-BOOT-OK marker=x", [False]).wait_for_console(
        "vm", DEFAULT_BOOT_MARKER, 10) == "REHOST-BOOT-OK marker=x"
    with pytest.raises(InvalidState, match="stopped before it printed"):
        _target(tmp_path / "b", "Kernel panic", [False]).wait_for_console("vm", DEFAULT_BOOT_MARKER, 10)
