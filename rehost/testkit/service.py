"""What every throwaway server of the tests shares (PostgreSQL, Redis, SeaweedFS, Azurite, the
Resource Manager fake, vcsim): a child in a process group of its own, its output in a log in
its folder, ended at interpreter exit when a test run skips its teardown, and stopped with the
server's own clean signal before SIGKILL, so it cannot outlive the run that started it."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self


class ServerProcess:
    """Subclasses name their log, their clean-stop signal and wait, and implement ``start``
    (which calls ``_spawn`` and then waits for the server to answer)."""

    log_name: ClassVar[str] = "server.log"
    #: the server's own clean stop (PostgreSQL and Azurite: SIGINT); None: SIGKILL at once
    stop_signal: ClassVar[signal.Signals | None] = signal.SIGTERM
    stop_wait: ClassVar[float] = 5.0

    def __init__(self, folder: Path | None, *, prefix: str, start_timeout: float) -> None:
        self._own_folder = folder is None
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=prefix))
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _spawn(self, args: list[str], *, stdout_pipe: bool = False, **popen: Any) -> subprocess.Popen[bytes]:
        """Start the server; its output goes to the log (``stdout_pipe``: stdout to the
        caller, for a server that says on it when it is ready)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / self.log_name, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._proc = subprocess.Popen(args, stdout=subprocess.PIPE if stdout_pipe else log,
                                          stderr=log if stdout_pipe else subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, **popen)
        finally:
            log.close()
        atexit.register(self.stop)  # a test run that ends without the fixture's teardown
        return self._proc

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return (self.folder / self.log_name).read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _end(self, sig: signal.Signals | None, wait: float) -> None:
        """End the process group: ``sig`` first (None: none), SIGKILL after ``wait`` seconds."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and sig is not None:
            os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _remove_folder(self) -> None:
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def stop(self) -> None:
        self._end(self.stop_signal, self.stop_wait)
        self._remove_folder()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
