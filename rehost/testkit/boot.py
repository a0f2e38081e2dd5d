"""Boot a disk under QEMU and wait for its boot marker: "does the replica really boot?".

Why: a replicated or failed-over disk is only proven good when it boots and the guest reads
its own data back. The tiny Linux image (:mod:`rehost.testkit.tinylinux`) prints
``REHOST-BOOT-OK marker=<text>`` on the serial console after mounting its root and checking
its checksums; ``boot_and_wait`` starts QEMU on a disk, waits for that line (or any regex),
stops QEMU whatever happens and reports the marker, the time it took and the console.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rehost.testkit.qemu import Drive, Network, QemuVM, VMError, VMExited, VMTimeout
from rehost.testkit.tinylinux import BOOT_FAIL_PREFIX, BOOT_OK_PREFIX

# the line must be complete: QEMU writes the console as it comes, "marker=v" may be half of it
DEFAULT_MARKER_REGEX = BOOT_OK_PREFIX + r" marker=(\S+)\r?\n"
DEFAULT_FAIL_REGEX = BOOT_FAIL_PREFIX + r".*"


class BootError(VMError):
    """The disk did not boot to its marker (the message carries the console tail)."""


class BootTimeout(BootError, VMTimeout):
    """No marker within the timeout."""


class BootFailed(BootError):
    """The guest reported a failure, or QEMU exited before the marker appeared."""


@dataclass(frozen=True)
class BootResult:
    """What a verified boot showed.

    ``marker`` is the regex's first group (or the whole match without groups), ``seconds``
    the time from launching QEMU to seeing it, ``console`` the full serial output.
    """

    marker: str
    seconds: float
    console: str


def boot_and_wait(
    disk: Path,
    *,
    fmt: str = "raw",
    marker_regex: str = DEFAULT_MARKER_REGEX,
    timeout: float = 120,
    memory_mib: int = 256,
    network: Network = "none",
    snapshot: bool = False,
    fail_regex: str | None = DEFAULT_FAIL_REGEX,
    log_dir: Path | None = None,
    accel: str = "tcg",
    stop_timeout: float = 15.0,
) -> BootResult:
    """Boot ``disk`` (virtio, ``fmt``), wait for ``marker_regex``, stop QEMU, return the result.

    ``snapshot=True`` sends the guest's writes to a throw-away file: the disk stays
    bit-identical (the tiny Linux mounts read-only anyway in its default mode, but a root
    that needs journal recovery would otherwise be written to). ``network="user-restrict"``
    gives the guest a NIC on an isolated user-mode network (no host or outside access).
    After the marker, the guest is asked to power off (ACPI) and killed after
    ``stop_timeout`` s; QEMU never outlives this call.
    """
    vm = QemuVM(
        [Drive(Path(disk), fmt=fmt, snapshot=snapshot)],
        memory_mib=memory_mib,
        network=network,
        accel=accel,
        name=f"boot-{Path(disk).stem}",
        log_dir=log_dir,
    )
    vm.start()
    started = vm.started_at or time.monotonic()
    try:
        try:
            m = vm.wait_for(marker_regex, timeout, fail_pattern=fail_regex)
        except VMTimeout as exc:
            raise BootTimeout(f"{disk} did not boot: {exc}") from exc
        except VMExited as exc:
            raise BootFailed(f"{disk} did not boot: {exc}") from exc
        except VMError as exc:
            if isinstance(exc, BootError):
                raise
            raise BootFailed(f"{disk} did not boot: {exc}") from exc
        seconds = time.monotonic() - started
        marker = m.group(1) if m.re.groups else m.group(0)
        vm.stop(graceful_timeout=stop_timeout)
    finally:
        vm.stop(graceful_timeout=0)
    return BootResult(marker=marker, seconds=seconds, console=vm.console_text())
