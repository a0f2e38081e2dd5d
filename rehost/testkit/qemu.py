"""Launch a QEMU machine, watch its serial console, talk QMP, and always clean it up.

Why a class of its own: boot verification in tests, the local QEMU/KVM target and running-VM
sources all need the same three things — start ``qemu-system-x86_64`` with disks, wait until
the guest prints something on its serial console, and stop it (gracefully if possible,
otherwise by force) without leaving processes behind. Nothing here knows about tests or the
tiny Linux image.

Serial console: a UNIX-socket chardev with a ``logfile``. QEMU writes every byte to the log
whether or not a client is connected, so we can read the whole console from the file at any
time and still type into the guest by connecting to the socket (``send_console``).

Sockets live in a short ``/tmp/rehost-vm-*`` directory: UNIX socket paths are limited to
107 bytes, which deep pytest ``tmp_path`` directories easily exceed.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import RehostError
from rehost.guest.agent import GuestAgent

Network = Literal["none", "user-restrict", "user"]

_TAIL_CHARS = 3000


class VMError(RehostError):
    """The virtual machine could not be started, reached, or did not behave as expected."""

    user_error = False


class VMTimeout(VMError):
    """The guest did not print what we waited for in time (the message has the console tail)."""


class VMExited(VMError):
    """QEMU exited while we were waiting for the guest (the message has the console tail)."""


def _tail(text: str, n: int = _TAIL_CHARS) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _qemu_opt(value: str | Path) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (commas are doubled)."""
    return str(value).replace(",", ",,")


# --------------------------------------------------------------------------------------------
# the VM


@dataclass(frozen=True)
class Drive:
    """One disk of the VM. ``snapshot`` keeps the image untouched (writes go to a temp file)."""

    path: Path
    fmt: str = "raw"
    interface: str = "virtio"
    snapshot: bool = False
    read_only: bool = False
    id: str | None = None
    cache: str | None = None

    def qemu_args(self, index: int) -> list[str]:
        opts = [
            f"file={_qemu_opt(Path(self.path).resolve())}",
            f"format={self.fmt}",
            f"if={self.interface}",
            f"id={self.id or f'drive{index}'}",
        ]
        if self.snapshot:
            opts.append("snapshot=on")
        if self.read_only:
            opts.append("readonly=on")
        if self.cache:
            opts.append(f"cache={self.cache}")
        return ["-drive", ",".join(opts)]


_RUNNING: weakref.WeakSet[QemuVM] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Last line of defence: never leave a QEMU behind when the Python process ends.
    for vm in list(_RUNNING):
        with contextlib.suppress(Exception):
            vm.stop(graceful_timeout=0)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuVM:
    """A ``qemu-system-x86_64`` process with a logged serial console and a QMP socket.

    Use as a context manager (or call ``stop``): QEMU is always stopped and reaped.
    ``accel`` defaults to ``tcg`` because this project's CI hosts have no usable KVM; pass
    ``"kvm"`` on real hosts. ``die_with_parent`` kills QEMU if the *thread* that started it
    dies (Linux PDEATHSIG semantics), so only use it from long-lived threads.

    ``guest_agent`` adds a virtio-serial port ``org.qemu.guest_agent.0`` whose host side is
    the UNIX socket ``guest_agent_socket`` (talk to it with :class:`rehost.guest.agent.
    GuestAgent`, or ``guest_agent_client()``). ``no_shutdown`` passes ``-no-shutdown``: when
    the guest powers off, QEMU stays (paused, QMP status ``shutdown``) so its disks and
    dirty bitmaps can still be read — a final sync after the source shut down; ``stop()``
    then quits it.
    """

    def __init__(
        self,
        drives: Sequence[Drive] = (),
        *,
        memory_mib: int = 256,
        smp: int = 1,
        network: Network = "none",
        accel: str = "tcg",
        machine: str = "pc",
        name: str = "rehost-vm",
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        qemu_binary: str = "qemu-system-x86_64",
        die_with_parent: bool = False,
        guest_agent: bool = False,
        no_shutdown: bool = False,
    ) -> None:
        self.drives = list(drives)
        self.memory_mib = memory_mib
        self.smp = smp
        self.network: Network = network
        self.accel = accel
        self.machine = machine
        self.name = name
        self.extra_args = list(extra_args)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.qemu_binary = qemu_binary
        self.die_with_parent = die_with_parent
        self.guest_agent = guest_agent
        self.no_shutdown = no_shutdown

        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._console_log: Path | None = None
        self._stderr_log: Path | None = None
        self._console_fh: BinaryIO | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._console = ""
        self._console_done = False  # set by stop(): the text is final
        self._qmp: QmpClient | None = None
        self._started_at: float | None = None

    # ---- properties -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def qmp_socket(self) -> Path:
        return self._require_workdir() / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self._require_workdir() / "serial.sock"

    @property
    def guest_agent_socket(self) -> Path:
        """Host side of the guest agent's virtio-serial port (needs ``guest_agent=True``)."""
        if not self.guest_agent:
            raise VMError("the VM was created without guest_agent=True")
        return self._require_workdir() / "qga.sock"

    def guest_agent_client(self, timeout: float = 10.0) -> GuestAgent:
        """A :class:`GuestAgent` on this VM's agent socket (connects on first use)."""
        return GuestAgent(self.guest_agent_socket, timeout=timeout)

    @property
    def console_log(self) -> Path:
        if self._console_log is None:
            raise VMError("the VM has not been started")
        return self._console_log

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def started_at(self) -> float | None:
        """``time.monotonic()`` when QEMU was launched."""
        return self._started_at

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _require_workdir(self) -> Path:
        if self._workdir is None:
            raise VMError("the VM has not been started")
        return self._workdir

    # ---- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The full QEMU command line (for logs and debugging)."""
        wd = self._require_workdir()
        assert self._console_log is not None
        cmd = [
            self.qemu_binary,
            "-name", self.name,
            "-accel", self.accel,
            "-machine", self.machine,
            "-m", str(self.memory_mib),
            "-smp", str(self.smp),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *(["-no-shutdown"] if self.no_shutdown else []),
            "-chardev",
            f"socket,id=serial0,path={_qemu_opt(wd / 'serial.sock')},server=on,wait=off,"
            f"logfile={_qemu_opt(self._console_log)},logappend=off",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{_qemu_opt(wd / 'qmp.sock')},server=on,wait=off",
        ]  # fmt: skip
        for i, drive in enumerate(self.drives):
            cmd += drive.qemu_args(i)
        if self.guest_agent:
            cmd += [
                "-device", "virtio-serial-pci,id=vserial0",
                "-chardev", f"socket,id=qga0,path={_qemu_opt(wd / 'qga.sock')},server=on,wait=off",
                "-device", "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            ]  # fmt: skip
        if self.network == "none":
            cmd += ["-nic", "none"]
        elif self.network == "user-restrict":
            cmd += ["-nic", "user,restrict=on,model=virtio-net-pci"]
        elif self.network == "user":
            cmd += ["-nic", "user,model=virtio-net-pci"]
        else:
            raise VMError(f"unknown network mode {self.network!r}")
        return cmd + self.extra_args

    def start(self) -> None:
        """Launch QEMU (returns at once; use ``wait_for`` to follow the boot)."""
        if self._proc is not None:
            raise VMError("the VM was already started")
        if shutil.which(self.qemu_binary) is None:
            raise VMError(f"{self.qemu_binary} not found: install qemu-system-x86")
        for d in self.drives:
            if not Path(d.path).exists():
                raise VMError(f"disk image {d.path} does not exist")
        self._workdir = Path(tempfile.mkdtemp(prefix="rehost-vm-", dir="/tmp"))
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._console_log = self.log_dir / f"{self.name}-console.log"
        else:
            self._console_log = self._workdir / "console.log"
        self._stderr_log = self._workdir / "qemu-stderr.log"
        cmd = self.command()
        with self._stderr_log.open("wb") as err:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop QEMU
                preexec_fn=_set_pdeathsig if self.die_with_parent else None,
            )
        self._started_at = time.monotonic()
        _RUNNING.add(self)

    def __enter__(self) -> QemuVM:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On error, do not spend time on a graceful shutdown the guest may never perform.
        self.stop(graceful_timeout=0 if exc_type is not None else 10.0)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for QEMU to exit on its own; its exit code or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def guest_powered_off(self) -> bool:
        """True once the guest powered off: QEMU exited, or (``no_shutdown``) it is paused
        in the ``shutdown`` run state."""
        if self._proc is None:
            return False
        if self._proc.poll() is not None:
            return True
        if not self.no_shutdown:
            return False
        try:
            status = self.qmp("query-status")
        except (VMError, QmpError, OSError):
            return self._proc.poll() is not None
        return bool(status.get("status") == "shutdown")

    def wait_powered_off(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``guest_powered_off()``; whether it happened."""
        deadline = time.monotonic() + timeout
        while True:
            if self.guest_powered_off():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def stop(self, *, graceful_timeout: float = 10.0) -> int | None:
        """Stop the VM: ACPI powerdown via QMP, then ``quit``, then SIGKILL. Always reaps.

        Returns QEMU's exit code (0 after a guest poweroff or ``quit``; negative if killed).
        Safe to call more than once.
        """
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None and graceful_timeout > 0 and not self.guest_powered_off():
                with contextlib.suppress(VMError, QmpError, OSError):
                    self.qmp("system_powerdown")
                if self.no_shutdown:
                    self.wait_powered_off(graceful_timeout)
                else:
                    self.wait_exit(graceful_timeout)
            if proc.poll() is None:
                with contextlib.suppress(VMError, QmpError, OSError):
                    self.qmp("quit")
                self.wait_exit(3.0)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        finally:
            _RUNNING.discard(self)
            if self._qmp is not None:
                self._qmp.close()
                self._qmp = None
            with contextlib.suppress(OSError, VMError):
                self._read_console()
            self._console_done = True
            if self._console_fh is not None:
                self._console_fh.close()
                self._console_fh = None
            if self._workdir is not None and self.log_dir is None:
                # Keep the console text in memory (console_text still works after stop).
                shutil.rmtree(self._workdir, ignore_errors=True)
            elif self._workdir is not None:
                for sock in ("qmp.sock", "serial.sock", "qga.sock"):
                    (self._workdir / sock).unlink(missing_ok=True)
        return proc.returncode

    # ---- serial console -------------------------------------------------------------------

    def _read_console(self) -> None:
        if self._console_done:
            return
        if self._console_fh is None:
            if self._console_log is None or not self._console_log.exists():
                return
            self._console_fh = self._console_log.open("rb")
        data = self._console_fh.read()
        if data:
            self._console += self._decoder.decode(data).replace("\r", "")

    def console_text(self) -> str:
        """Everything the guest printed on its serial console so far (``\\r`` removed)."""
        self._read_console()
        return self._console

    def stderr_text(self) -> str:
        """QEMU's own stdout/stderr (start-up errors such as a locked or missing image)."""
        if self._stderr_log is not None and self._stderr_log.exists():
            return self._stderr_log.read_text(errors="replace")
        return ""

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        timeout: float,
        *,
        start: int = 0,
        fail_pattern: str | re.Pattern[str] | None = None,
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears in the console text at or after offset ``start``.

        Raises ``VMError`` as soon as ``fail_pattern`` matches (the guest said it failed),
        ``VMExited`` if QEMU exits first and ``VMTimeout`` after ``timeout`` seconds — all
        with the console tail in the message, which is what one needs to debug a boot.
        Pass ``start=previous_match.end()`` to wait for a *later* occurrence.
        """
        rx = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        frx = (
            re.compile(fail_pattern, re.MULTILINE)
            if isinstance(fail_pattern, str)
            else fail_pattern
        )
        if self._proc is None:
            raise VMError("the VM has not been started")
        deadline = time.monotonic() + timeout
        while True:
            exited = self._proc.poll() is not None
            self._read_console()
            text = self._console
            m = rx.search(text, start)
            if m:
                return m
            if frx is not None:
                fm = frx.search(text, start)
                if fm:
                    raise VMError(
                        f"guest reported failure: {fm.group(0).strip()}\n"
                        f"--- console tail ---\n{_tail(text)}"
                    )
            if exited:
                raise VMExited(
                    f"QEMU exited (code {self._proc.returncode}) before {rx.pattern!r} appeared"
                    f"\n--- qemu stderr ---\n{_tail(self.stderr_text(), 1000)}"
                    f"\n--- console tail ---\n{_tail(text)}"
                )
            if time.monotonic() > deadline:
                raise VMTimeout(
                    f"{rx.pattern!r} did not appear on the console within {timeout:.0f}s"
                    f"\n--- console tail ---\n{_tail(text)}"
                )
            time.sleep(0.05)

    def send_console(self, text: str) -> None:
        """Type ``text`` on the serial console (connects to the chardev socket, then leaves).

        Output produced meanwhile still lands in the console log.
        """
        if not self.is_running():
            raise VMError("the VM is not running")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.serial_socket))
            s.sendall(text.encode())
            # Let QEMU consume the bytes before we hang up (it reads in small chunks).
            time.sleep(0.2)

    # ---- QMP ------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command on this VM (connects on first use); returns its result.

        Argument names use QMP's spelling; pass names with dashes via a dict:
        ``vm.qmp("block-dirty-bitmap-add", **{"node": "drive0", "name": "b0"})``.
        """
        if self._proc is None:
            raise QmpError("the VM has not been started")
        if self._qmp is None:
            client = QmpClient(self.qmp_socket)
            client.connect(deadline=time.monotonic() + 30, alive=self.is_running)
            self._qmp = client
        return self._qmp.execute(command, arguments)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exit={self.returncode}"
        return f"<QemuVM {self.name} pid={self.pid} {state}>"


def reap_all() -> None:
    """Stop every VM this process started that is still running (test-session teardown)."""
    _kill_leftovers()


__all__ = [
    "Drive",
    "Network",
    "QemuVM",
    "QmpClient",
    "QmpError",
    "VMError",
    "VMExited",
    "VMTimeout",
    "reap_all",
]
