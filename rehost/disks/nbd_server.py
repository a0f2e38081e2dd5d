"""qemu-nbd as a context manager: serve one disk image on a private unix socket.

Every image is read through QEMU so that rehost never parses an image format itself.
The socket lives in a fresh ``0700`` temp dir; the server is ready when qemu-nbd writes
its pid file, which it does only after the image is open and the socket listens (the
socket file alone appears before the image is opened). If qemu-nbd exits instead, its
stderr becomes the DiskError message. The process is always terminated and reaped, and
the temp dir removed, whatever happens in the ``with`` body.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from rehost.disks.formats import DiskImage, qemu_image_opts
from rehost.errors import DiskError
from rehost.fs import direct_io_works

_POLL = 0.005
_STOP_TIMEOUT = 10.0


class QemuNbdServer:
    """A running ``qemu-nbd`` serving ``image`` (read-only unless ``writable``).

    ``shared`` is how many clients may connect at once (a few parallel readers).
    ``cache`` is QEMU's cache mode; by default ``none`` (O_DIRECT, so a full read of a
    large disk does not evict the page cache) where the file system supports it and the
    export is read-only, else ``writeback`` (writes are flushed explicitly).
    """

    def __init__(
        self,
        image: DiskImage,
        *,
        writable: bool = False,
        shared: int = 4,
        cache: str | None = None,
        aio: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if shared < 1:
            raise ValueError("shared must be at least 1")
        self.image = image
        self.writable = writable
        self.shared = shared
        if cache is None:
            cache = "writeback" if writable or not direct_io_works(image.path) else "none"
        self.cache = cache
        self.aio = aio or ("native" if cache in ("none", "directsync") else "threads")
        self.start_timeout = start_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- where clients connect ------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        if self._dir is None:
            raise DiskError("qemu-nbd is not running")
        return self._dir / "nbd.sock"

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle ------------------------------------------------------------------

    def command(self, socket: Path, pid_file: Path) -> list[str]:
        """The qemu-nbd command line (the format is named inside the json: filename)."""
        cmd = [
            # If rehost dies (kill -9), the kernel kills qemu-nbd too: no orphaned servers.
            # The death signal follows the *thread* that started it, so start servers from
            # a thread that outlives them (the caller's, never a short-lived worker).
            *_PDEATHSIG,
            "qemu-nbd",
            "--persistent",
            f"--shared={self.shared}",
            f"--socket={socket}",
            f"--pid-file={pid_file}",
            f"--cache={self.cache}",
            f"--aio={self.aio}",
        ]
        if self.writable:
            # Zero requests may punch holes, so zeroed ranges stay sparse in the target.
            cmd.append("--discard=unmap")
        else:
            cmd.append("--read-only")
        cmd.append(qemu_image_opts(self.image))
        return cmd

    def start(self) -> QemuNbdServer:
        if self._proc is not None:
            raise DiskError("qemu-nbd is already running")
        self._dir = Path(tempfile.mkdtemp(prefix="rehost-nbd-"))
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self._dir is not None
        pid_file = self._dir / "qemu-nbd.pid"
        stderr_path = self._dir / "stderr"
        cmd = self.command(self.socket_path, pid_file)
        # stderr goes to a file: a pipe nobody reads could fill and stall a long export.
        with open(stderr_path, "wb") as stderr:
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
                )
            except FileNotFoundError:
                raise DiskError("qemu-nbd is not installed (run ./scripts/install)") from None

        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise DiskError(
                    f"qemu-nbd could not serve {self.image.describe()}: {self._stderr()}"
                )
            if _nonempty(pid_file) and self.socket_path.exists():
                return
            if time.monotonic() > deadline:
                raise DiskError(
                    f"qemu-nbd did not start serving {self.image.describe()} within "
                    f"{self.start_timeout:.0f} s: {self._stderr()}"
                )
            time.sleep(_POLL)

    def _stderr(self) -> str:
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "stderr").read_text(errors="replace").strip()
        except OSError:
            return "no error output"
        # qemu-nbd repeats the whole json: filename; keep the reason.
        lines = [line.removeprefix("qemu-nbd: ") for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:]) if lines else f"exit status {self.returncode}"

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def stop(self) -> None:
        """Terminate and reap qemu-nbd, remove the temp dir. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        folder, self._dir = self._dir, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> QemuNbdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"<QemuNbdServer {self.image.describe()} {mode} pid={self.pid}>"


_PDEATHSIG: list[str] = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
