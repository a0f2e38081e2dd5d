"""The agent's NBD exports: one read-only ``qemu-nbd`` per disk, TLS with client
certificates of the vault's CA, and only the replication server's certificate authorized
(``authz-simple`` on its distinguished name).

qemu-nbd reads ``ca-cert.pem``, ``server-cert.pem`` and ``server-key.pem`` from the agent's
TLS folder. Disk N listens on ``nbd_port + N``, export name ``diskN``.

The agent opens each listening socket itself, with ``TCP_NODELAY``, and hands it to qemu-nbd
by systemd socket activation (``LISTEN_FDS``): accepted connections inherit the option.
qemu-nbd does not set it, and over TLS every reply is two sends (header, data), so Nagle
held each small read's data until the client's delayed ACK: 44 ms per 4 KiB read
(measured, bench/agent.py), 0.2 ms without.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
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
        """qemu-nbd, given the listening socket as stdin, which becomes fd 3 (socket activation;
        POSIX sh redirects only single-digit descriptors)."""
        disk = self.disks[index]
        cache = "none" if direct_io_works(disk) else "writeback"
        pdeath = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        activate = 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@" 3<&0 0</dev/null'
        return [
            *pdeath,
            "sh",
            "-c",
            activate,
            "qemu-nbd",
            "--object",
            f"tls-creds-x509,id=tls0,dir={self.tls},endpoint=server,verify-peer=on",
            "--object",
            f"authz-simple,id=auth0,identity=CN={SERVER_CN}",
            "--tls-creds",
            "tls0",
            "--tls-authz",
            "auth0",
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
                with err, self._listen(self.port + i) as sock:
                    proc = subprocess.Popen(
                        self.command(i, pid_file),
                        stdin=sock.fileno(),
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

    def _listen(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, port))
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise ExportError(f"cannot listen on {self.host}:{port} for NBD: {e.strerror or e}") from None
        return sock

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
