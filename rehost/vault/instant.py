"""Instant recovery: serve recovery points over NBD from daemon processes.

A failed-over machine boots from qcow2 overlays whose backing files are these exports. The
servers run as their own processes (``rehost serve-point``) in their own session, so the
machine keeps its disk when the rehost command that started the failover ends or is
killed; a resumed job finds them again through their pid files in ``<vault>/run/<vm>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rehost.errors import DiskError
from rehost.process import alive
from rehost.repository.manifest import RecoveryPoint
from rehost.targets.base import PointDisk
from rehost.vault.models import MachineRow
from rehost.vault.vault import Vault

START_TIMEOUT_S = 60


def _run_dir(vault: Vault, vm: str) -> Path:
    return vault.root / "run" / vm


def socket_path(vault: Vault, vm: str, disk: int) -> Path:
    """A short path: UNIX socket paths max out at 107 bytes, vault paths can be long."""
    digest = hashlib.sha256(f"{vault.root.resolve()}/{vm}".encode()).hexdigest()[:16]
    d = Path("/tmp") / f"rehost-pt-{digest}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d / f"disk{disk}.sock"


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def start_point_servers(vault: Vault, machine: MachineRow, point: RecoveryPoint, vm: str) -> list[PointDisk]:
    """One NBD export per disk of ``point``; servers that already run are reused."""
    run = _run_dir(vault, vm)
    run.mkdir(parents=True, exist_ok=True)
    specs = []
    for d in point.disks:
        sock = socket_path(vault, vm, d.index)
        pidfile = run / f"disk{d.index}.pid"
        pid = _pid(pidfile)
        if pid is None or not sock.exists():
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            env = dict(os.environ)
            pw = vault.unlocked_password
            if pw is not None:  # handed to the child only, never on a command line or in a log
                env["REHOST_PASSWORD"] = pw
            with open(run / f"disk{d.index}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "rehost.cli.main", "--vault", str(vault.root), "serve-point",
                     machine.name, "--point", point.id, "--disk", str(d.index), "--socket", str(sock)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
                )
            pidfile.write_text(str(proc.pid))
            deadline = time.monotonic() + START_TIMEOUT_S
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (run / f"disk{d.index}.log").read_text(errors="replace")[-800:]
                    raise DiskError(f"the NBD server for disk {d.index} of {vm} did not start: {tail}")
                time.sleep(0.05)
        specs.append(PointDisk(d.index, d.size, point.id, f"nbd+unix:///?socket={sock}"))
    return specs


def stop_point_servers(vault: Vault, vm: str) -> None:
    run = _run_dir(vault, vm)
    if not run.is_dir():
        return
    for pidfile in run.glob("disk*.pid"):
        pid = _pid(pidfile)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
    for f in run.iterdir():
        f.unlink()
    run.rmdir()
    sock_dir = socket_path(vault, vm, 0).parent
    for f in sock_dir.iterdir():
        f.unlink(missing_ok=True)
    sock_dir.rmdir()
