"""The agent's NBD exports: one read-only ``qemu-nbd`` per disk, TLS with client
certificates of the vault's CA, and only the replication server's certificate authorized
(``authz-simple`` on its distinguished name).

qemu-nbd reads ``ca-cert.pem``, ``server-cert.pem`` and ``server-key.pem`` from the agent's
TLS folder. Disk N listens on ``nbd_port + N``, export name ``diskN``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rehost.agent import SERVER_CN
from rehost.fs import direct_io_works


class ExportError(Exception):
    pass


class NbdExports:
    def __init__(self, disks: list[Path], tls: Path, host: str, port: int, shared: int = 4) -> None:
        self.disks = disks
        self.tls = tls
        self.host = host
        self.port = port
        self.shared = shared
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None

    def command(self, index: int, pid_file: Path) -> list[str]:
        disk = self.disks[index]
        cache = "none" if direct_io_works(disk) else "writeback"
        pdeath = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        return [
            *pdeath,
            "qemu-nbd",
            "--object",
            f"tls-creds-x509,id=tls0,dir={self.tls},endpoint=server,verify-peer=on",
            "--object",
            f"authz-simple,id=auth0,identity=CN={SERVER_CN}",
            "--tls-creds",
            "tls0",
            "--tls-authz",
            "auth0",
            "--bind",
            self.host,
            "--port",
            str(self.port + index),
            "--export-name",
            f"disk{index}",
            "--read-only",
            "--persistent",
            f"--shared={self.shared}",
            f"--cache={cache}",
            f"--aio={'native' if cache == 'none' else 'threads'}",
            f"--pid-file={pid_file}",
            "--format=raw",
            str(disk),
        ]

    def start(self, timeout: float = 30.0) -> NbdExports:
        self._dir = Path(tempfile.mkdtemp(prefix="rehost-agent-nbd-"))
        try:
            for i in range(len(self.disks)):
                pid_file = self._dir / f"disk{i}.pid"
                err = open(self._dir / f"disk{i}.err", "wb")  # noqa: SIM115
                with err:
                    proc = subprocess.Popen(
                        self.command(i, pid_file),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                self._procs.append(proc)
                deadline = time.monotonic() + timeout
                while not (pid_file.exists() and pid_file.stat().st_size > 0):
                    if proc.poll() is not None:
                        text = (self._dir / f"disk{i}.err").read_text(errors="replace").strip()
                        raise ExportError(f"qemu-nbd could not export {self.disks[i]}: {text}")
                    if time.monotonic() > deadline:
                        raise ExportError(f"qemu-nbd did not start for {self.disks[i]}")
                    time.sleep(0.01)
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self._procs]

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None
