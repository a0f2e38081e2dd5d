"""Test kit: real, tiny machines to replicate, fail over and boot-verify.

End-to-end tests need a disk that really boots and proves its data survived the trip. This
package builds one offline from the host's Debian packages (:mod:`rehost.testkit.tinylinux`)
and boots disks under QEMU, watching the serial console for a marker
(:mod:`rehost.testkit.boot`, :mod:`rehost.testkit.qemu`). Building needs root (loop devices,
mount); booting does not.
"""

from __future__ import annotations

from rehost.testkit.boot import BootResult, BootTimeout, boot_and_wait
from rehost.testkit.qemu import Drive, QemuVM, QmpClient, QmpError, VMError, VMExited
from rehost.testkit.tinylinux import (
    BOOT_FAIL_PREFIX,
    BOOT_OK_PREFIX,
    READY_LINE,
    build_tiny_linux,
    read_file,
    read_marker,
    set_marker,
    set_mode,
    write_files,
)

__all__ = [
    "BOOT_FAIL_PREFIX",
    "BOOT_OK_PREFIX",
    "READY_LINE",
    "BootResult",
    "BootTimeout",
    "Drive",
    "QemuVM",
    "QmpClient",
    "QmpError",
    "VMError",
    "VMExited",
    "boot_and_wait",
    "build_tiny_linux",
    "read_file",
    "read_marker",
    "set_marker",
    "set_mode",
    "write_files",
]
