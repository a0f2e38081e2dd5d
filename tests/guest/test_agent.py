"""The real qemu-guest-agent in the tiny Linux (stay mode) under QEMU/TCG, through GuestAgent."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.guest.agent import (
    GuestAgent,
    GuestAgentCommandError,
    GuestAgentError,
    GuestAgentTimeout,
    GuestFreezer,
)
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import READY_LINE, read_file, set_mode

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_qemu")]

CHURN_RE = re.compile(r"rehost-churn: wrote (\d+) MiB in ([\d.]+) s")


@pytest.fixture(scope="module")
def agent_image(tiny_linux_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stay-mode copy of the session image (which carries qemu-ga by default)."""
    dest = tmp_path_factory.mktemp("agent") / "stay.img"
    shutil.copyfile(tiny_linux_base, dest)
    set_mode(dest, "stay")
    return dest


def _boot(image: Path, **kwargs: bool) -> tuple[QemuVM, GuestAgent]:
    vm = QemuVM([Drive(image)], guest_agent=True, name="agent", **kwargs)
    vm.start()
    try:
        vm.wait_for(READY_LINE, 120, fail_pattern=r"REHOST-BOOT-FAIL.*")
        ready = time.monotonic() - (vm.started_at or 0)
        agent = vm.guest_agent_client(timeout=15)
        agent.wait_ready(30, alive=vm.is_running)
        answering = time.monotonic() - (vm.started_at or 0)
        print(f"\nboot to {READY_LINE} {ready:.1f}s, agent answering {answering:.1f}s")
    except BaseException:
        vm.stop(graceful_timeout=0)
        raise
    return vm, agent


@pytest.fixture(scope="module")
def running(agent_image: Path) -> Iterator[tuple[QemuVM, GuestAgent]]:
    """One VM shared by the non-destructive tests (they leave the guest thawed)."""
    vm, agent = _boot(agent_image)
    try:
        yield vm, agent
    finally:
        agent.close()
        vm.stop(graceful_timeout=20)


def test_ping_info_exec(running: tuple[QemuVM, GuestAgent]) -> None:
    _vm, agent = running
    agent.ping()
    info = agent.info()
    enabled = {c["name"] for c in info["supported_commands"] if c["enabled"]}
    assert {"guest-fsfreeze-freeze", "guest-exec", "guest-shutdown"} <= enabled
    assert agent.exec(["echo", "hi"]) == (0, b"hi\n", b"")
    code, out, err = agent.exec(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"data")
    assert (code, out, err) == (3, b"data", b"oops\n")
    with pytest.raises(GuestAgentCommandError):
        agent.exec(["/no/such/program"])
    # the root ext4 is the one file system the agent can freeze (the initramfs has no device)
    mountinfo = agent.file_read("/proc/self/mountinfo").decode()
    assert re.search(r" /mnt rw,.* - ext4 /dev/vda1 ", mountinfo), mountinfo


def test_file_write_lands_on_the_guest_disk(running: tuple[QemuVM, GuestAgent]) -> None:
    _vm, agent = running
    agent.file_write("/mnt/from-agent.txt", b"hello guest\n")
    assert agent.exec(["cat", "/mnt/from-agent.txt"]).stdout == b"hello guest\n"


def test_a_stale_client_does_not_confuse_the_next(running: tuple[QemuVM, GuestAgent]) -> None:
    vm, agent = running
    agent.close()
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # leaves replies unread
        s.connect(str(vm.guest_agent_socket))
        s.sendall(b'{"execute": "guest-info"}\n{"execute": "guest-sync", "arguments": {"id": 5}}\n')
        time.sleep(1)
    agent.ping()
    assert agent.exec(["echo", "ok"]).stdout == b"ok\n"


def test_freeze_blocks_writes_until_thaw(running: tuple[QemuVM, GuestAgent]) -> None:
    vm, agent = running
    freezer: GuestFreezer = agent
    assert agent.freeze_status() == "thawed"
    try:
        assert freezer.freeze() == 1  # /mnt
        assert agent.freeze_status() == "frozen"
        # The agent refuses guest-exec/guest-file-* while frozen: a write through it fails...
        with pytest.raises(GuestAgentCommandError, match="frozen"):
            agent.exec(["sh", "-c", "echo x > /mnt/frozen.txt"], timeout=5)
        # ...and a write from the guest's own shell blocks until the thaw.
        start = len(vm.console_text())
        vm.send_console("echo during-freeze > /mnt/frozen.txt && sync && echo FROZEN-WRITE-$((40+2))\n")
        time.sleep(3)
        assert "FROZEN-WRITE-42" not in vm.console_text()[start:]
        thawed_at = time.monotonic()
    finally:
        assert freezer.thaw() == 1
    assert agent.freeze_status() == "thawed"
    vm.wait_for(r"FROZEN-WRITE-42", 30, start=start)
    print(f"\nblocked write finished {time.monotonic() - thawed_at:.2f}s after the thaw")
    assert agent.exec(["cat", "/mnt/frozen.txt"]).stdout == b"during-freeze\n"
    assert agent.thaw() == 0  # nothing frozen any more


def test_churn_writes_at_about_the_asked_rate(running: tuple[QemuVM, GuestAgent]) -> None:
    _vm, agent = running
    code, out, err = agent.exec(["rehost-churn", "2", "5"], timeout=60)
    assert code == 0, err
    m = CHURN_RE.search(out.decode())
    assert m, out
    mib, secs = int(m.group(1)), float(m.group(2))
    assert 4.5 <= secs <= 6.5
    assert 9 <= mib <= 11, out  # 2 MiB/s for 5 s
    # as fast as it goes: what an RPO test can ask for under TCG (printed for the record)
    code, out, err = agent.exec(["rehost-churn", "1000", "5", "32"], timeout=60)
    assert code == 0, err
    m = CHURN_RE.search(out.decode())
    assert m, out
    rate = int(m.group(1)) / float(m.group(2))
    print(f"\nrehost-churn top speed under this accelerator: {rate:.1f} MiB/s (fsync per MiB)")
    assert rate > 2
    assert agent.exec(["stat", "-c", "%s", "/mnt/rehost-churn.dat"]).stdout == b"33554432\n"
    code, _out, err = agent.exec(["rehost-churn", "fast", "1"])
    assert code == 2 and b"usage" in err


def test_killed_vm_gives_an_error_not_a_hang(agent_image: Path, tmp_path: Path) -> None:
    image = tmp_path / "kill.img"
    shutil.copyfile(agent_image, image)
    vm, agent = _boot(image)
    try:
        errors: list[BaseException] = []

        def long_command() -> None:
            try:
                agent.exec(["sleep", "600"], timeout=600)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=long_command)
        worker.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGKILL)
        worker.join(30)
        assert not worker.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], GuestAgentError), errors
        assert not isinstance(errors[0], GuestAgentTimeout), errors
        assert time.monotonic() - killed_at < 10
        with pytest.raises(GuestAgentError, match=r"cannot connect|gone"):
            agent.ping()
    finally:
        vm.stop(graceful_timeout=0)


def test_shutdown_powers_the_guest_off(agent_image: Path, tmp_path: Path) -> None:
    image = tmp_path / "off.img"
    shutil.copyfile(agent_image, image)
    vm, agent = _boot(image)
    try:
        agent.file_write("/mnt/before-shutdown.txt", b"flushed\n")
        started = time.monotonic()
        agent.shutdown("powerdown")
        assert vm.wait_exit(60) == 0
        print(f"\nguest-shutdown to QEMU exit: {time.monotonic() - started:.1f}s")
    finally:
        vm.stop(graceful_timeout=0)
    assert "REHOST-POWERDOWN" in vm.console_text()
    assert read_file(image, "before-shutdown.txt") == b"flushed\n"


def test_no_shutdown_keeps_qemu_after_poweroff(agent_image: Path, tmp_path: Path) -> None:
    image = tmp_path / "noshut.img"
    shutil.copyfile(agent_image, image)
    vm, agent = _boot(image, no_shutdown=True)
    try:
        agent.shutdown()
        assert vm.wait_powered_off(60)
        assert vm.is_running()  # QEMU is still there, paused: its disks can still be read
        assert vm.qmp("query-status")["status"] == "shutdown"
        assert any(b["device"] == "drive0" for b in vm.qmp("query-block"))
        with pytest.raises(GuestAgentTimeout):  # the socket is there, nobody answers
            agent.ping(timeout=2)
        started = time.monotonic()
        assert vm.stop() == 0
        assert time.monotonic() - started < 5  # no pointless ACPI wait on a dead guest
    finally:
        vm.stop(graceful_timeout=0)
