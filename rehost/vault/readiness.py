"""Readiness of a machine for a target, from an offline inspection of a recovery point.

The point's disks are served read-only over NBD (the same servers instant recovery uses, each
holding a reading lease so prune keeps the point) and inspected in one libguestfs launch
(``rehost.guest.inspect``, 15–27 s under TCG). The Inspection is cached as JSON per point in
the vault's cache folder (``cache/<machine>/inspection-v<FORMAT>-<point id>.json``): a point never
changes, so a second readiness check of the same point (for this or another target) reads
the file and launches nothing. The target's own limits (disk sizes, count, firmware:
``Target.check_machine``) are added as requirements.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rehost.guest.inspect import FORMAT, Inspection, inspect_disks
from rehost.guest.readiness import Readiness, Requirement, evaluate
from rehost.vault.instant import start_point_servers, stop_point_servers
from rehost.vault.inventory import get_machine, spec_of
from rehost.vault.protection import find_point
from rehost.vault.targets import provider, target_of
from rehost.vault.vault import Vault

Inspector = Callable[[Sequence[str], str], Inspection]


@dataclass(frozen=True)
class ReadinessReport:
    machine: str
    point: str
    target: str
    readiness: Readiness
    inspection: Inspection
    #: True when the inspection came from the cache (no appliance launched)
    cached: bool

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "point": self.point, "target": self.target, "cached": self.cached,
                **self.readiness.to_json(), "inspection": self.inspection.to_json()}


def cache_path(vault: Vault, machine: str, point_id: str) -> Path:
    return vault.cache.root / machine / f"inspection-v{FORMAT}-{point_id}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One inspection per point at a time: a second caller waits, then reads the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(path: Path) -> Inspection | None:
    try:
        return Inspection.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # absent, or written by another version: inspect again


def inspect_point(vault: Vault, name: str, point: str = "latest", *, inspector: Inspector = inspect_disks,
                  refresh: bool = False) -> tuple[str, Inspection, bool]:
    """The point's Inspection: (point id, inspection, from the cache?)."""
    machine = get_machine(vault, name)
    p = find_point(vault, name, point)
    path = cache_path(vault, machine.name, p.id)
    if not refresh and (hit := _load(path)) is not None:
        return p.id, hit, True
    with _locked(path):
        if not refresh and (hit := _load(path)) is not None:
            return p.id, hit, True
        vm = f"inspect-{p.short_id}"
        try:
            disks = start_point_servers(vault, machine, p, vm)
            uris = [str(d.uri) for d in sorted(disks, key=lambda d: d.index)]
            result = inspector(uris, "raw")
        finally:
            stop_point_servers(vault, vm)
        # the sockets are gone: name what was inspected instead
        result = replace(result, disks=tuple(f"point {p.short_id} disk {d.index}" for d in p.disks))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=1))
        tmp.replace(path)
        return p.id, result, False


def readiness(vault: Vault, name: str, *, target: str | None = None, point: str = "latest",
              inspector: Inspector = inspect_disks) -> ReadinessReport:
    """Evaluate the machine's point (latest by default) for its target (or ``target``)."""
    machine = get_machine(vault, name)
    row = target_of(vault, machine, target)  # before inspecting: a missing target fails fast
    point_id, ins, cached = inspect_point(vault, name, point, inspector=inspector)
    result = evaluate(ins, row.kind)
    limits = tuple(
        Requirement(f"target limit: {c.name}", "pass" if c.ok else "fail", c.detail,
                    "" if c.ok else f"the machine does not fit target {row.name} as it is")
        for c in provider(row).check_machine(spec_of(machine)))
    result = Readiness(result.target_kind, result.requirements + limits)
    return ReadinessReport(machine.name, point_id, row.name, result, ins, cached)


def timed_readiness(vault: Vault, name: str, **kw: Any) -> tuple[ReadinessReport, float]:
    started = time.monotonic()
    report = readiness(vault, name, **kw)
    return report, time.monotonic() - started
