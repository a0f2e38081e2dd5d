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

from rehost.errors import RehostError
from rehost.guest.inspect import FORMAT, Inspection, inspect_disks
from rehost.guest.readiness import Readiness, Requirement, evaluate, has_rules, no_rules
from rehost.vault.instant import start_point_servers, stop_point_servers
from rehost.vault.inventory import get_machine, spec_of
from rehost.vault.models import MachineRow, TargetRow
from rehost.vault.protection import find_point, point_list
from rehost.vault.targets import get_target, provider, target_of
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
    result = Readiness(result.target_kind, result.requirements + _limits(vault, machine, row))
    return ReadinessReport(machine.name, point_id, row.name, result, ins, cached)


def _limits(vault: Vault, machine: MachineRow, row: TargetRow) -> tuple[Requirement, ...]:
    """The target's own limits (disk sizes, count, firmware) as requirements."""
    return tuple(
        Requirement(f"target limit: {c.name}", "pass" if c.ok else "fail", c.detail,
                    "" if c.ok else f"the machine does not fit target {row.name} as it is")
        for c in provider(row).check_machine(spec_of(machine)))


# -- the gate before a (test) failover ---------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """A point's readiness as a (test) failover sees it: never an exception for an
    inspection that could not run (that is a warning, ``not inspected: why``)."""

    machine: str
    point: str
    target: str
    readiness: Readiness
    #: "cached inspection", "inspected now", "not inspected: <why>", or "no inspection needed (...)"
    inspection: str

    def failed(self) -> list[Requirement]:
        return self.readiness.failed()

    def warnings(self) -> list[Requirement]:
        return [r for r in self.readiness.requirements if r.status == "warn"]

    def to_json(self) -> dict[str, Any]:
        def named(rs: list[Requirement]) -> list[dict[str, str]]:
            return [{"name": r.name, "detail": r.detail, "fix": r.fix} for r in rs]

        return {"point": self.point, "target": self.target, "status": self.readiness.status,
                "inspection": self.inspection, "failed": named(self.failed()),
                "warnings": named(self.warnings())}


#: set to off (0, no, false) and a (test) failover uses a point's cached inspection only: it
#: launches no appliance (15-40 s under TCG) and a point not inspected yet is a warning
INSPECT_ENV = "REHOST_READINESS_INSPECT"


def inspection_off() -> str:
    """Why a (test) failover must not launch an inspection ('' when it may)."""
    value = os.environ.get(INSPECT_ENV, "").strip()
    return f"{INSPECT_ENV}={value}" if value.lower() in ("0", "off", "no", "false") else ""


def gate(vault: Vault, name: str, *, target: str, point: str = "latest",
         inspector: Inspector | None = None) -> Gate:
    """Evaluate the machine's point for ``target`` before a (test) failover. The inspection
    is the cached one when the point has been inspected (about 30 ms); a target kind whose
    guests need nothing (the memory double) is not inspected at all; with
    ``REHOST_READINESS_INSPECT=off`` only a cached inspection is used."""
    machine = get_machine(vault, name)
    row = get_target(vault, target)
    p = find_point(vault, name, point)  # a bad point is the caller's error, not a warning
    if not has_rules(row.kind):
        found, how = no_rules(row.kind), f"no inspection needed ({row.kind} targets)"
    else:
        try:
            off = inspection_off()
            cached_only = _load(cache_path(vault, machine.name, p.id)) if off else None
            if off and cached_only is None:
                raise RuntimeError(f"{off} (rehost readiness {name} inspects the point)")
            if cached_only is not None:
                ins, cached = cached_only, True
            else:
                _, ins, cached = inspect_point(vault, name, p.id, inspector=inspector or inspect_disks)
        except Exception as e:  # whatever stops the inspection must not block the failover
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            found = Readiness(row.kind, (Requirement(
                "inspection", "warn", f"not inspected: {why}",
                f"see rehost readiness {name} --target {row.name}; the failover goes on unchecked"),))
            how = f"not inspected: {why}"
        else:
            found, how = evaluate(ins, row.kind), "cached inspection" if cached else "inspected now"
    found = Readiness(found.target_kind, found.requirements + _limits(vault, machine, row))
    return Gate(machine.name, p.id, row.name, found, how)


def timed_readiness(vault: Vault, name: str, **kw: Any) -> tuple[ReadinessReport, float]:
    started = time.monotonic()
    report = readiness(vault, name, **kw)
    return report, time.monotonic() - started


# -- what is known without inspecting (the item view) ------------------------------------------------


def known(vault: Vault, name: str) -> dict[str, Any] | None:
    """The newest point's readiness for the machine's target, from what is cached: no NBD
    server, no appliance (a file read). ``None`` without a target or a point; ``status``
    ``not inspected`` while nobody has inspected that point (``rehost readiness``, or a
    failover's readiness step, does)."""
    machine = get_machine(vault, name)
    try:
        row = target_of(vault, machine)
    except RehostError:  # no target, or several and none assigned
        return None
    records = point_list(vault, name)
    if not records:
        return None
    point = records[-1].id
    summary: dict[str, Any] = {"point": point, "target": row.name}
    if has_rules(row.kind):
        ins = _load(cache_path(vault, machine.name, point))
        if ins is None:
            return {**summary, "status": "not inspected", "failed": [], "warnings": 0,
                    "text": f"not inspected (rehost readiness {name})"}
        found = evaluate(ins, row.kind)
    else:
        found = no_rules(row.kind)
    found = Readiness(found.target_kind, found.requirements + _limits(vault, machine, row))
    failed = [r.name for r in found.failed()]
    warnings = sum(r.status == "warn" for r in found.requirements)
    text = found.status + (f" ({len(failed)})" if failed else f" ({warnings})" if warnings else "")
    return {**summary, "status": found.status, "failed": failed, "warnings": warnings, "text": text}
