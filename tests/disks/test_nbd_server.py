"""qemu-nbd lifecycle: ready before use, errors surfaced, always reaped and cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rehost.disks import DiskImage, QemuNbdServer, open_nbd
from rehost.errors import DiskError

from .images import make_variant


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_serves_and_cleans_up(master: Path, master_bytes: bytes, tmp_path: Path) -> None:
    image = make_variant(master, "qcow2", tmp_path)
    with QemuNbdServer(image, shared=2) as server:
        pid = server.pid
        assert pid is not None
        folder = server.socket_path.parent
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert server.cache == "none"  # ext4 here: O_DIRECT, no page-cache churn
        # Two connections at once: a socket path and a URI.
        with open_nbd(server.socket_path) as a, open_nbd(server.uri) as b:
            assert a.read(17 << 20, 4096) == master_bytes[17 << 20 : (17 << 20) + 4096]
            assert b.read(0, 512) == master_bytes[:512]
            assert a.readonly and not a.can_zero and not a.can_flush
    assert _gone(pid)
    assert not folder.exists()
    server.stop()  # twice is fine


def test_cleans_up_when_the_body_fails(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "raw", tmp_path)
    with pytest.raises(RuntimeError), QemuNbdServer(image) as server:
        pid, folder = server.pid, server.socket_path.parent
        raise RuntimeError("boom")
    assert pid is not None and _gone(pid)
    assert not folder.exists()


def test_start_failure_shows_qemu_stderr(tmp_path: Path) -> None:
    text = tmp_path / "fake.qcow2"
    text.write_bytes(b"not qcow2" * 100)
    server = QemuNbdServer(DiskImage(text, "qcow2", 1 << 20))
    with pytest.raises(DiskError) as err:
        server.start()
    message = str(err.value)
    assert message.startswith(f"qemu-nbd could not serve {text}: ")
    assert "Image is not in qcow2 format" in message
    assert server.pid is None
    with pytest.raises(DiskError, match="not running"):
        _ = server.socket_path


def test_connect_failure_is_a_disk_error(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="cannot connect to NBD server"):
        open_nbd(tmp_path / "no.sock")


def test_command_line(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "qcow2", tmp_path)
    ro = QemuNbdServer(image, cache="writeback").command(Path("/s"), Path("/p"))
    assert ro[:3] == ["setpriv", "--pdeathsig", "KILL"]  # no orphan when rehost is killed
    ro = ro[3:]
    assert ro[:7] == [
        "qemu-nbd", "--persistent", "--shared=4", "--socket=/s", "--pid-file=/p",
        "--cache=writeback", "--aio=threads",
    ]
    assert "--read-only" in ro and ro[-1].startswith('json:{"driver":"qcow2"')
    rw = QemuNbdServer(image, writable=True).command(Path("/s"), Path("/p"))
    assert "--read-only" not in rw and "--discard=unmap" in rw and "--cache=writeback" in rw
