"""The target-provider contract: where a failed-over machine runs.

The failover service hands a target the disks to boot as NBD URIs of recovery points
(instant recovery); the target makes them into machine disks, starts the machine, proves it
booted, and copies the data in while it runs (hydration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Network = Literal["production", "isolated", "none"]


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    checks: list[VerifyCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


@dataclass(frozen=True)
class DiskSpec:
    index: int
    size: int
    backing_uri: str  # nbd+unix:///?socket=... serving the recovery point


class Target(Protocol):
    kind: str

    def verify(self, needed_bytes: int = 0) -> VerifyReport: ...

    def create_disks(self, vm: str, disks: list[DiskSpec]) -> list[Path]: ...

    def start(self, vm: str, network: Network) -> dict[str, Any]: ...

    def is_running(self, vm: str) -> bool: ...

    def wait_for_console(self, vm: str, pattern: str, timeout: float) -> str: ...

    def hydrate(self, vm: str, progress: Callable[[int, int], None] | None = None) -> None: ...

    def stop(self, vm: str, graceful_timeout: float = 30.0) -> None: ...

    def remove(self, vm: str) -> None: ...

    def exists(self, vm: str) -> bool: ...
