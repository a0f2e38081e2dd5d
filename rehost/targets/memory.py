"""Target ``memory``: a TEST DOUBLE. It runs no machine; it stands in for an upload-then-boot
target (such as Azure) so the failover plans, resume after a kill at each step, and the
conflict rules get fast tests without booting QEMU.

What it really does:
- ``stage_disk`` keeps each staged disk's bytes, as a sparse file ``<path>/<vm>/diskN.img``
  (zeros skipped, writes checked for 512-byte alignment as a page blob would), so a test can
  compare the staged disk with the recovery point byte for byte;
- ``start``/``stop`` only record the state; ``boot_verdict`` "boots" the staged disk 0: it
  fails unless the disk carries an MBR boot signature (``55 aa`` at byte 510), and its
  "console" is what the disk holds that matches the pattern (a test writes the line it
  expects, e.g. ``REHOST-BOOT-OK marker=v2``, into its disk image);
- ``endpoint`` answers the services a test ``expose``s for a machine (a TCP server the test
  runs on loopback stands in for the guest's port), so the checks run for real;
- faults can be injected per operation (``inject``): fail with an error, or end the process
  at once (``os._exit``, as a kill -9 would) before or after the operation's work.

State lives in the target's folder, not in the process, so CLI processes and a resumed job
share it; it is small (sparse files) and nothing runs in the background.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rehost.errors import InvalidState, RehostError, UsageError
from rehost.spec import MachineSpec
from rehost.targets.base import (
    Capabilities,
    Extent,
    Peer,
    Placement,
    PointDisk,
    Progress,
    TargetNetwork,
    VerifyCheck,
    VerifyReport,
)
from rehost.targets.registry import TargetPlugin, register

MBR_SIGNATURE = b"\x55\xaa"
#: how much of the boot disk the emulated console shows (the verdict's search window)
CONSOLE_WINDOW = 64 << 20
NETWORKS = (
    TargetNetwork("production", description="recorded only: the test double has no network"),
    TargetNetwork("isolated", isolated=True, description="recorded only: the test network"),
)
CAPABILITIES = Capabilities(stages_disks=True, test_network="isolated", verdict="emulated")
FaultAction = Literal["fail", "exit"]
OPERATIONS = ("verify", "stage_disk", "create", "start", "boot_verdict", "stop", "remove")


class InjectedFault(RehostError):
    """A fault a test asked the memory target for."""

    exit_code = 13


@dataclass(frozen=True)
class MemorySettings:
    """The ``memory`` target's config (``rehost target add memory NAME --path DIR``)."""

    path: Path = field(metadata={"help": "Folder for the test double's state and staged disks.",
                                 "host_path": True})
    exit_code: int = field(default=137, metadata={
        "help": "Exit status of an injected 'exit' fault (137: as killed by SIGKILL)."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).absolute())


@dataclass
class _Fault:
    op: str
    action: FaultAction
    when: Literal["before", "after"]
    times: int


class MemoryTarget:
    """The test double; see the module's docstring for what it does and does not do."""

    kind = "memory"

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def networks(self) -> tuple[TargetNetwork, ...]:
        return NETWORKS

    # -- fault injection ------------------------------------------------------------------

    def inject(self, op: str, action: FaultAction = "fail", *, when: Literal["before", "after"] = "before",
               times: int = 1) -> None:
        """Make ``op`` fail (or end the process) the next ``times`` calls."""
        if op not in OPERATIONS:
            raise UsageError(f"the memory target has no operation {op!r} ({', '.join(OPERATIONS)})")
        faults = [*self._faults(), _Fault(op, action, when, times)]
        self._write(self._faults_file(), [asdict(f) for f in faults])

    def clear_faults(self) -> None:
        self._faults_file().unlink(missing_ok=True)

    def _faults_file(self) -> Path:
        return self.settings.path / "faults.json"

    def _faults(self) -> list[_Fault]:
        try:
            return [_Fault(**f) for f in json.loads(self._faults_file().read_text())]
        except FileNotFoundError:
            return []

    def _fault(self, op: str, when: Literal["before", "after"]) -> None:
        faults = self._faults()
        hit = next((f for f in faults if f.op == op and f.when == when and f.times > 0), None)
        if hit is None:
            return
        hit.times -= 1
        self._write(self._faults_file(), [asdict(f) for f in faults if f.times > 0])
        if hit.action == "exit":
            os._exit(self.settings.exit_code)
        raise InjectedFault(f"injected fault: {op} failed ({when} its work)")

    # -- state --------------------------------------------------------------------------

    def _dir(self, vm: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", vm):
            raise UsageError(f"invalid machine name {vm!r}")
        return self.settings.path / vm

    def _machine(self, vm: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self._dir(vm) / "machine.json").read_text()))
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, value: Any) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)

    def _update(self, vm: str, **values: Any) -> Placement:
        m = self._machine(vm)
        if m is None:
            raise InvalidState(f"the memory target has no machine {vm!r}")
        m.update(values)
        self._write(self._dir(vm) / "machine.json", m)
        return self._placement(vm, m)

    def _placement(self, vm: str, m: dict[str, Any]) -> Placement:
        return Placement(vm, str(self._dir(vm)), m.get("network"), None,
                         {"state": m["state"], "starts": m.get("starts", 0)})

    def disk_path(self, vm: str, index: int) -> Path:
        """The staged bytes of disk ``index`` (a sparse raw file), for tests to compare."""
        return self._dir(vm) / f"disk{index}.img"

    def staged_point(self, vm: str, index: int) -> str | None:
        try:
            return str(json.loads((self._dir(vm) / f"disk{index}.json").read_text())["point"])
        except FileNotFoundError:
            return None

    # -- queries ------------------------------------------------------------------------

    def check_machine(self, spec: MachineSpec) -> list[VerifyCheck]:
        """No limits beyond the host's: any disk size or count QEMU takes."""
        return []

    def verify(self, needed_bytes: int = 0) -> VerifyReport:
        self._fault("verify", "before")
        p = self.settings.path
        ok = p.is_dir() and os.access(p, os.W_OK | os.X_OK)
        return VerifyReport([
            VerifyCheck("test double", True, "memory target: runs no machine (tests only)"),
            VerifyCheck("storage", ok, f"{p} is writable" if ok else f"{p} is not a writable folder"),
        ])

    def find(self, vm: str) -> Placement | None:
        m = self._machine(vm)
        return None if m is None else self._placement(vm, m)

    def is_running(self, placement: Placement) -> bool:
        m = self._machine(placement.vm)
        return m is not None and m["state"] == "running"

    # -- operations ---------------------------------------------------------------------

    def stage_disk(self, vm: str, disk: PointDisk, data: Iterable[Extent],
                   progress: Progress | None = None, *,
                   spec: MachineSpec | None = None) -> None:
        """Keep the disk's bytes; a disk already staged from the same point is not read again."""
        self._fault("stage_disk", "before")
        d = self._dir(vm)
        d.mkdir(parents=True, exist_ok=True)
        path = self.disk_path(vm, disk.index)
        if self.staged_point(vm, disk.index) == disk.point and path.exists():
            return
        part = path.with_name(path.name + ".part")
        align = CAPABILITIES.stage_alignment
        with open(part, "wb") as f:
            f.truncate(disk.size)
            for offset, length, chunk in data:
                if offset % align or (length % align and offset + length != disk.size):
                    raise UsageError(f"unaligned write at {offset}+{length} (pages are {align}-aligned)")
                if chunk is not None:
                    f.seek(offset)
                    f.write(chunk)
                if progress:
                    progress(offset + length, disk.size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
        self._write(d / f"disk{disk.index}.json", {"point": disk.point, "size": disk.size})
        self._fault("stage_disk", "after")

    def create(self, spec: MachineSpec, vm: str, disks: Sequence[PointDisk]) -> Placement:
        self._fault("create", "before")
        existing = self._machine(vm)
        if existing is not None:
            return self._placement(vm, existing)
        for disk in disks:
            if self.staged_point(vm, disk.index) != disk.point:
                raise InvalidState(f"disk {disk.index} of {vm} is not staged from point {disk.point[:12]}")
        m = {"state": "created", "machine": spec.name, "cpus": spec.cpus, "memory_mib": spec.memory_mib,
             "firmware": spec.firmware.value, "disks": [d.index for d in disks], "network": None, "starts": 0}
        self._dir(vm).mkdir(parents=True, exist_ok=True)
        self._write(self._dir(vm) / "machine.json", m)
        self._fault("create", "after")
        return self._placement(vm, m)

    def start(self, placement: Placement, network: str, *, ports: Sequence[int] = (),
              peers: Sequence[Peer] = ()) -> Placement:
        self._fault("start", "before")
        if network not in [n.name for n in NETWORKS]:
            raise UsageError(f"the memory target has no network {network!r}")
        m = self._machine(placement.vm)
        if m is not None and m["state"] == "running":
            return self._placement(placement.vm, m)
        starts = (m or {}).get("starts", 0) + 1
        p = self._update(placement.vm, state="running", network=network, starts=starts)
        self._fault("start", "after")
        return p

    def boot_verdict(self, placement: Placement, pattern: str, timeout: float) -> str:
        """An emulated boot of disk 0: an MBR signature, then ``pattern`` in the disk's bytes."""
        self._fault("boot_verdict", "before")
        if not self.is_running(placement):
            raise InvalidState(f"{placement.vm} is not running on the memory target")
        disk = self.disk_path(placement.vm, 0)
        with open(disk, "rb") as f:
            head = f.read(CONSOLE_WINDOW)
        if head[510:512] != MBR_SIGNATURE:
            raise InvalidState(f"{placement.vm} did not boot: disk 0 has no MBR boot signature")
        m = re.search(pattern, head.decode("latin-1"))
        if m is None:
            raise InvalidState(f"{placement.vm} did not show {pattern!r} (not on its boot disk)")
        return m.group(0)

    def expose(self, machine: str, port: int, host: str, host_port: int) -> None:
        """Tests: the guest port ``port`` of the machine made from ``machine`` (its test copy
        and its failed-over self alike) is answered by ``host:host_port``."""
        path = self.settings.path / "services.json"
        services = json.loads(path.read_text()) if path.exists() else {}
        services.setdefault(machine, {})[str(port)] = [host, host_port]
        self._write(path, services)

    def endpoint(self, placement: Placement, port: int) -> tuple[str, int] | None:
        m = self._machine(placement.vm)
        path = self.settings.path / "services.json"
        if m is None or m["state"] != "running" or not path.exists():
            return None
        found = json.loads(path.read_text()).get(m["machine"], {}).get(str(port))
        return None if found is None else (str(found[0]), int(found[1]))

    def hydrate(self, placement: Placement, progress: Progress | None = None) -> None:
        """Nothing to do: the disks were staged before the machine was made."""

    def stop(self, placement: Placement, graceful_timeout: float = 30.0) -> None:
        self._fault("stop", "before")
        if self._machine(placement.vm) is not None:
            self._update(placement.vm, state="stopped")

    def remove(self, placement: Placement) -> None:
        self._fault("remove", "before")
        shutil.rmtree(self._dir(placement.vm), ignore_errors=True)


def _prepare(settings: MemorySettings) -> None:
    settings.path.mkdir(parents=True, exist_ok=True)


PLUGIN = register(TargetPlugin(
    kind="memory", summary="TEST DOUBLE: stages disks into a folder and emulates a boot; runs nothing.",
    config=MemorySettings, capabilities=CAPABILITIES, open=MemoryTarget, prepare=_prepare,
    test_double=True))
