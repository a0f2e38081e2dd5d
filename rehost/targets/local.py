"""Target ``local``: a KVM/QEMU host (this machine), the embedded default.

Each failed-over machine gets a folder ``<path>/<vm>/`` with its qcow2 disks, its serial
console log and ``vm.json``. QEMU runs daemonized (``-daemonize``), so a machine keeps
running when the rehost command that started it ends or is killed; everything needed to
find it again (pid file, QMP socket) is in the folder.

Disks are qcow2 overlays whose backing file is an NBD export of the recovery point: the
machine starts at once whatever the disk size (instant recovery), and ``hydrate`` copies
the data into the overlay while it runs (QMP ``block-stream``), after which the machine no
longer needs the repository.

Reaching machines (QEMU user networking, on ``production`` and ``isolated`` alike):
``start(..., ports=[80])`` forwards each guest TCP port from a free port of 127.0.0.1
(``hostfwd``; ``placement.details["ports"] == {"80": 41234}``, ``endpoint`` gives
``("127.0.0.1", 41234)``). ``peers`` are other machines this one must reach: each peer name
gets a guest-visible address 10.0.2.100, .101, ... (``details["peers"]``), and a guest
connection to that address and the peer's port is relayed by a small Python process that
QEMU runs per connection (``guestfwd=...-cmd:``) to the peer's host and port — the only
way out that ``restrict=on`` leaves. A forward on 127.0.0.1 accepts a connection even when
nothing listens in the guest: only bytes coming back prove a service.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import DiskError, InvalidState, UsageError
from rehost.process import alive, free_port
from rehost.spec import Firmware, MachineSpec
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

GiB = 1 << 30
NETWORKS = (
    TargetNetwork("production", description="QEMU user networking (NAT to this host's networks)"),
    # test failover: QEMU user networking with restrict=on: the guest reaches nothing outside
    TargetNetwork("isolated", isolated=True, description="user networking with restrict=on: no way out"),
    TargetNetwork("none", isolated=True, description="no network card"),
)
_NIC: dict[str, list[str]] = {
    "production": ["-nic", "user,model=virtio-net-pci"],
    "isolated": ["-nic", "user,restrict=on,model=virtio-net-pci"],
    "none": ["-nic", "none"],
}
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.IGNORECASE)
#: OVMF (Debian's ovmf): firmware code and the matching variable-store template, 4 MiB first;
#: the secure-boot builds need SMM and are not used
OVMF_PAIRS = (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
              ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"))
UEFI_MIN_MEMORY_MIB = 512


def ovmf() -> tuple[str, str] | None:
    """The first OVMF code + variables pair installed here."""
    return next(((c, v) for c, v in OVMF_PAIRS if os.path.exists(c) and os.path.exists(v)), None)


#: the guest-visible address of the first peer; the next ones follow (QEMU's user network is
#: 10.0.2.0/24: .2 host, .3 DNS, .15.. DHCP)
PEER_BASE = ipaddress.IPv4Address("10.0.2.100")
MAX_PEERS = 100


def _nics(network: str, macs: list[str], first_extra: str = "") -> list[str]:
    """QEMU's NICs on ``network``: one per NIC of the machine, with its MAC (one without a
    MAC when the spec has none); ``none``: no NIC. ``first_extra`` (``,hostfwd=...``) goes on
    the first NIC's user network: the guest's eth0."""
    base = _NIC[network]
    if network == "none":
        return base
    if not macs:
        return [base[0], base[1] + first_extra]
    return [arg for i, mac in enumerate(macs)
            for arg in (base[0], f"{base[1]},mac={mac.lower()}" + (first_extra if i == 0 else ""))]


#: the relay QEMU runs for each guest connection to a peer (stdin/stdout/stderr are the
#: connection): connects to HOST PORT and copies both ways, half-closes passed on
RELAY_SCRIPT = """\
import os, socket, sys, threading
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
guest = socket.socket(fileno=0)
try:
    peer = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    peer.settimeout(None)
except OSError:
    os._exit(1)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        os._exit(0)


up = threading.Thread(target=pump, args=(guest, peer), daemon=True)
up.start()
pump(peer, guest)
up.join(60)
os._exit(0)
"""


CAPABILITIES = Capabilities(boots_from_nbd=True, test_network="isolated", verdict="serial-console")


@dataclass(frozen=True)
class LocalSettings:
    """The ``local`` target's config (``rehost target add local NAME --path DIR``)."""

    path: Path = field(metadata={"help": "Folder where failed-over machines and their disks live.",
                                 "host_path": True})
    accel: str = field(default="tcg", metadata={
        "help": "tcg (software emulation) or kvm (where /dev/kvm works)."})
    memory_mib: int = field(default=256, metadata={
        "help": "The most memory a machine gets here, MiB: its source's memory up to this."})
    qemu_binary: str = field(default="qemu-system-x86_64", metadata={
        "help": "The QEMU to run machines with."})
    min_free_bytes: int = field(default=1 * GiB, metadata={
        "help": "Free space verify asks for in the folder at least, bytes."})

    def __post_init__(self) -> None:
        if self.accel not in ("tcg", "kvm"):
            raise ValueError(f"--accel must be tcg or kvm, not {self.accel!r}")
        if not 64 <= self.memory_mib <= 1 << 20:
            raise ValueError("--memory-mib must be between 64 and 1048576")
        object.__setattr__(self, "path", Path(self.path).absolute())

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LocalSettings:
        return cls(Path(d["path"]), d.get("accel", "tcg"), int(d.get("memory_mib", 256)),
                   d.get("qemu_binary", "qemu-system-x86_64"), int(d.get("min_free_bytes", GiB)))


class LocalTarget:
    kind = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def networks(self) -> tuple[TargetNetwork, ...]:
        return NETWORKS

    # -- verification ------------------------------------------------------------------------

    def check_machine(self, spec: MachineSpec) -> list[VerifyCheck]:
        """No disk limits beyond the host's; a UEFI machine needs OVMF here and the memory its
        firmware and boot loader take (GRUB runs out of memory under OVMF with 256 MiB)."""
        if spec.firmware != Firmware.UEFI:
            return []
        found = ovmf()
        memory = min(spec.memory_mib, self.settings.memory_mib)
        return [
            VerifyCheck("uefi firmware", found is not None,
                        f"OVMF ({found[0]})" if found else "no OVMF firmware found "
                        f"({', '.join(c for c, _ in OVMF_PAIRS)}): install the ovmf package"),
            VerifyCheck("uefi memory", memory >= UEFI_MIN_MEMORY_MIB,
                        f"{memory} MiB" if memory >= UEFI_MIN_MEMORY_MIB else
                        f"{memory} MiB is too little for OVMF and a boot loader: give the target "
                        f"--memory-mib {UEFI_MIN_MEMORY_MIB} or more"),
        ]

    def verify(self, needed_bytes: int = 0) -> VerifyReport:
        """Check compute, storage and network prerequisites before anything depends on them."""
        s = self.settings
        checks: list[VerifyCheck] = []
        qemu = shutil.which(s.qemu_binary)
        version = ""
        if qemu:
            r = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30)
            version = r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else ""
        checks.append(VerifyCheck("qemu", bool(version), version or f"{s.qemu_binary} not found "
                                  "(install qemu-system-x86)"))
        for tool in ("qemu-img",):
            checks.append(VerifyCheck(tool, shutil.which(tool) is not None,
                                      "found" if shutil.which(tool) else f"{tool} not found"))
        checks.append(self._check_accel())
        checks.append(self._check_storage(needed_bytes))
        if version:
            r = subprocess.run([s.qemu_binary, "-netdev", "help"], capture_output=True, text=True, timeout=30)
            has_user = "user" in r.stdout.split()
            checks.append(VerifyCheck("networks", has_user,
                                      "production: user (NAT), test: user restrict=on (isolated)"
                                      if has_user else "QEMU lacks user networking (slirp)"))
        return VerifyReport(checks)

    def _check_accel(self) -> VerifyCheck:
        if self.settings.accel == "tcg":
            kvm = "present" if os.path.exists("/dev/kvm") else "absent"
            return VerifyCheck("compute", True, f"software emulation (TCG); /dev/kvm {kvm}")
        if self.settings.accel == "kvm":
            ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
            return VerifyCheck("compute", ok, "KVM" if ok else "/dev/kvm is not usable: use --accel tcg")
        return VerifyCheck("compute", False, f"unknown accelerator {self.settings.accel!r}")

    def _check_storage(self, needed: int) -> VerifyCheck:
        p = self.settings.path
        if not p.is_dir():
            return VerifyCheck("storage", False, f"{p} is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            return VerifyCheck("storage", False, f"{p} is not writable")
        st = os.statvfs(p)
        free = st.f_bavail * st.f_frsize
        need = max(needed, self.settings.min_free_bytes)
        ok = free >= need
        return VerifyCheck("storage", ok, f"{free / GiB:.1f} GiB free in {p}"
                           + ("" if ok else f", {need / GiB:.1f} GiB needed"))

    # -- machine folders -----------------------------------------------------------------------

    def vm_dir(self, vm: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", vm):
            raise UsageError(f"invalid machine name {vm!r}")
        return self.settings.path / vm

    def _runtime(self, vm: str) -> Path:
        """Sockets live under /run-like short paths: UNIX socket paths max out at 107 bytes."""
        digest = hashlib.sha256(str(self.vm_dir(vm).resolve()).encode()).hexdigest()[:16]
        d = Path("/tmp") / f"rehost-vm-{digest}"
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def find(self, vm: str) -> Placement | None:
        return self.describe(vm) if self.vm_dir(vm).is_dir() else None

    def stage_disk(self, vm: str, disk: PointDisk, data: Iterable[Extent],
                   progress: Progress | None = None, *,
                   spec: MachineSpec | None = None) -> None:
        raise InvalidState("the local target boots from NBD (instant recovery): it stages no disks")

    def create(self, spec: MachineSpec, vm: str, disks: Sequence[PointDisk]) -> Placement:
        """qcow2 overlays on the NBD exports; kept if they exist (a resumed job reuses them)."""
        d = self.vm_dir(vm)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for disk in disks:
            if not disk.uri:
                raise InvalidState(f"disk {disk.index} of {vm} has no NBD export to boot from")
            path = d / f"disk{disk.index}.qcow2"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                r = subprocess.run(
                    ["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", disk.uri, "-F", disk.format,
                     str(tmp), str(disk.size)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise DiskError(f"cannot create disk {disk.index} of {vm}: {r.stderr.strip()}")
                os.replace(tmp, path)
            paths.append(path)
        # the machine's CPUs, memory and MACs come from its spec, within what this host has and
        # allows (CPUs up to its cores, memory up to the target's setting); its firmware picks
        # the machine: SeaBIOS on pc, or OVMF (UEFI) on q35
        self._write_meta(vm, {"disks": [str(p) for p in paths], "machine": spec.name,
                              "cpus": max(1, min(spec.cpus, os.cpu_count() or 1)),
                              "memory_mib": max(64, min(spec.memory_mib, self.settings.memory_mib)),
                              "macs": [n.mac for n in spec.nics if _MAC.fullmatch(n.mac)],
                              "firmware": spec.firmware.value})
        return self.describe(vm)

    def _meta(self, vm: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.vm_dir(vm) / "vm.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _write_meta(self, vm: str, values: dict[str, Any]) -> None:
        meta = {**self._meta(vm), **values}
        tmp = self.vm_dir(vm) / "vm.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self.vm_dir(vm) / "vm.json")

    # -- running ----------------------------------------------------------------------------

    def pid(self, vm: str) -> int | None:
        try:
            pid = int((self.vm_dir(vm) / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def running(self, vm: str) -> bool:
        return self.pid(vm) is not None

    def is_running(self, placement: Placement) -> bool:
        return self.running(placement.vm)

    def console_log(self, vm: str) -> Path:
        return self.vm_dir(vm) / "console.log"

    def start(self, placement: Placement, network: str, *, ports: Sequence[int] = (),
              peers: Sequence[Peer] = ()) -> Placement:
        """Start the machine (a no-op if it runs); returns where it runs.

        ``ports``: guest TCP ports forwarded from free ports of 127.0.0.1 (``details["ports"]``,
        ``endpoint``); ``peers``: other machines the guest reaches at 10.0.2.100, .101, ...
        (one address per peer name, in order of first appearance; ``details["peers"]``). On
        the network ``none`` there is no NIC, so neither. A machine that runs already keeps
        the forwards it was started with.
        """
        vm = placement.vm
        if network not in _NIC:
            raise UsageError(f"the local target has no network {network!r} ({', '.join(_NIC)})")
        wanted_ports = _check_ports(ports)
        addresses = _peer_addresses(peers)
        if self.running(vm):
            return self.describe(vm)
        s = self.settings
        d = self.vm_dir(vm)
        disks = [Path(p) for p in self._meta(vm).get("disks", [])]
        if not disks:
            raise InvalidState(f"{vm} has no disks on target {s.path}")
        rt = self._runtime(vm)
        for sock in ("qmp.sock", "serial.sock"):
            with contextlib.suppress(FileNotFoundError):
                (rt / sock).unlink()
        meta = self._meta(vm)
        uefi = meta.get("firmware") == Firmware.UEFI.value
        cmd = [
            s.qemu_binary, "-name", vm, "-accel", s.accel, "-machine", "q35" if uefi else "pc",
            "-m", str(meta.get("memory_mib", s.memory_mib)), "-smp", str(meta.get("cpus", 1)),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-daemonize", "-pidfile", str(d / "qemu.pid"),
            "-chardev", f"socket,id=serial0,path={rt / 'serial.sock'},server=on,wait=off,"
            f"logfile={_opt(d / 'console.log')},logappend=on",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{rt / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        if uefi:
            cmd += self._uefi_flash(vm)
        for i, path in enumerate(disks):
            cmd += ["-blockdev", f"driver=qcow2,node-name=disk{i},file.driver=file,"
                    f"file.filename={_opt(path)}",
                    "-device", f"virtio-blk-pci,drive=disk{i}" + (",bootindex=0" if i == 0 else "")]
        if network == "none":
            wanted_ports, peers, addresses = [], (), {}
        guestfwd = ""
        if peers:
            relay = d / "relay.py"
            relay.write_text(RELAY_SCRIPT)
            seen: set[tuple[str, int]] = set()
            for peer in peers:
                if (addresses[peer.name], peer.port) in seen:
                    raise UsageError(f"two peers at {addresses[peer.name]}:{peer.port}")
                seen.add((addresses[peer.name], peer.port))
                relay_cmd = shlex.join([sys.executable, "-I", "-S", str(relay), peer.host,
                                        str(peer.host_port)])
                guestfwd += f",guestfwd=tcp:{addresses[peer.name]}:{peer.port}-cmd:{_opt(relay_cmd)}"
        for attempt in range(5):  # a free port can be taken before QEMU binds it: new ones
            forwarded = {str(p): free_port() for p in wanted_ports}
            hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in forwarded.items())
            r = subprocess.run(cmd + _nics(network, meta.get("macs") or [], hostfwd + guestfwd),
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            if r.returncode == 0 or "host forwarding rule" not in r.stderr or attempt == 4:
                break
        if r.returncode != 0:
            raise DiskError(f"QEMU could not start {vm}: {r.stderr.strip() or r.stdout.strip()}")
        self._write_meta(vm, {"network": network, "accel": s.accel, "qmp": str(rt / "qmp.sock"),
                              "started": time.time(), "ports": forwarded, "peers": addresses})
        return self.describe(vm)

    def _uefi_flash(self, vm: str) -> list[str]:
        """OVMF's code (read-only, shared) and the machine's own variable store (boot entries
        survive a restart), made from OVMF's template at the first start."""
        found = ovmf()
        if found is None:
            raise InvalidState(f"{vm} has UEFI firmware but no OVMF is installed here (the ovmf package)")
        code, template = found
        store = self.vm_dir(vm) / "OVMF_VARS.fd"
        if not store.exists():
            tmp = store.with_suffix(".tmp")
            shutil.copyfile(template, tmp)
            os.replace(tmp, store)
        return ["-drive", f"if=pflash,format=raw,readonly=on,file={_opt(Path(code))}",
                "-drive", f"if=pflash,format=raw,file={_opt(store)}"]

    def describe(self, vm: str) -> Placement:
        meta = self._meta(vm)
        details: dict[str, Any] = {"pid": self.pid(vm)}
        for key in ("ports", "peers"):
            if meta.get(key):
                details[key] = dict(meta[key])
        return Placement(vm, str(self.vm_dir(vm)), meta.get("network"), str(self.console_log(vm)), details)

    def endpoint(self, placement: Placement, port: int) -> tuple[str, int] | None:
        """Where this host reaches the machine's guest TCP ``port``: ("127.0.0.1", forwarded
        port), or None when ``start`` did not forward it."""
        ports = placement.details.get("ports") or self._meta(placement.vm).get("ports") or {}
        host_port = ports.get(str(port))
        return ("127.0.0.1", int(host_port)) if host_port else None

    def qmp(self, vm: str) -> QmpClient:
        client = QmpClient(self._runtime(vm) / "qmp.sock", timeout=30)
        client.connect(deadline=time.monotonic() + 20, alive=lambda: self.running(vm))
        return client

    def boot_verdict(self, placement: Placement, pattern: str, timeout: float) -> str:
        return self.wait_for_console(placement.vm, pattern, timeout)

    def wait_for_console(self, vm: str, pattern: str, timeout: float) -> str:
        """The first match of ``pattern`` on the serial console; raises with the tail if none.

        QEMU writes the console as the guest's UART sends it, so the last line may be half
        written: a match that runs to the end of what is written counts only once nothing
        more arrived for a second (a prompt such as ``login:`` ends no line). Under load a
        match at once returned "REHOST-BOOT-OK mark" (seen in CI).
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        log = self.console_log(vm)
        settled: tuple[str, float] = ("", 0.0)
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            m = rx.search(text)
            if m and m.end() < len(text):
                return m.group(0)
            if m and text == settled[0] and time.monotonic() - settled[1] >= 1.0:
                return m.group(0)
            if text != settled[0]:
                settled = (text, time.monotonic())
            if not self.running(vm):  # nothing more will be written: read it all once more
                text = log.read_text(errors="replace") if log.exists() else ""
                m = rx.search(text)
                if m:
                    return m.group(0)
                raise InvalidState(f"{vm} stopped before it printed {pattern!r}; console:\n{text[-1500:]}")
            if time.monotonic() > deadline:
                raise InvalidState(f"{vm} did not print {pattern!r} within {timeout:.0f} s; "
                                   f"console:\n{text[-1500:]}")
            time.sleep(0.2)

    def hydrate(self, placement: Placement, progress: Progress | None = None) -> None:
        """Copy every backing byte into the overlays so the machine stands alone.

        Running machine: QMP ``block-stream`` (the guest keeps running). Stopped machine:
        ``qemu-img rebase -b ''`` does the same offline. Safe to call again after a crash.
        """
        vm = placement.vm
        disks = [Path(p) for p in self._meta(vm).get("disks", [])]
        pending = [i for i, p in enumerate(disks) if _backing(p)]
        if not pending:
            return
        if not self.running(vm):
            self._rebase_offline(vm, disks)
            return
        try:
            client = self.qmp(vm)
            try:
                self._stream(client, vm, pending, progress)
            finally:
                client.close()
        except QmpError:
            deadline = time.monotonic() + 15
            while self.running(vm) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.running(vm):
                raise
            # QEMU exited while streaming (the guest powered off); it flushed on exit and the
            # backing file is still named (no auto-finalize), so finish the copy offline.
            self._rebase_offline(vm, disks)
        left = [i for i, p in enumerate(disks) if _backing(p)]
        if left:
            raise DiskError(f"disks {left} of {vm} still depend on the repository after hydration")

    def _rebase_offline(self, vm: str, disks: list[Path]) -> None:
        for i, path in enumerate(disks):
            if not _backing(path):
                continue
            r = subprocess.run(["qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", str(path)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise DiskError(f"hydrating disk {i} of {vm} failed: {r.stderr.strip()}")

    def _stream(
        self, client: QmpClient, vm: str, pending: list[int], progress: Callable[[int, int], None] | None
    ) -> None:
        """block-stream without auto-finalize: QEMU would otherwise drop the backing file from
        the qcow2 header while the new cluster mappings still sit in its metadata cache, and
        a crash right then (seen here with kill -9) leaves a disk that reads as zeros. So:
        stream, flush, finalize (header change), flush again, dismiss."""
        ids = [f"hydrate{i}" for i in pending]
        known = {j["id"] for j in client.execute("query-jobs")}
        for i, jid in zip(pending, ids, strict=True):
            if jid not in known:  # a resumed job finds its stream still running
                client.execute("block-stream", {"job-id": jid, "device": f"disk{i}",
                                                "auto-finalize": False, "auto-dismiss": False})

        def wait(states: tuple[str, ...]) -> dict[str, dict[str, Any]]:
            while True:
                jobs = {j["id"]: j for j in client.execute("query-jobs") if j["id"] in ids}
                if progress:
                    progress(sum(j["current-progress"] for j in jobs.values()),
                             sum(j["total-progress"] for j in jobs.values()) or 1)
                failed = [j for j in jobs.values() if j.get("error")]
                if failed:
                    raise DiskError(f"hydrating {vm} failed: {failed[0]['id']}: {failed[0]['error']}")
                if all(j["status"] in states for j in jobs.values()):
                    return jobs
                time.sleep(0.3)

        jobs = wait(("pending", "concluded"))
        _flush(client)
        for jid, job in jobs.items():
            if job["status"] == "pending":
                client.execute("block-job-finalize", {"id": jid})
        wait(("concluded",))
        _flush(client)
        for jid in jobs:
            client.execute("block-job-dismiss", {"id": jid})

    def stop(self, placement: Placement, graceful_timeout: float = 30.0) -> None:
        """ACPI power-down first; kill after ``graceful_timeout``."""
        vm = placement.vm
        pid = self.pid(vm)
        if pid is None:
            return
        if graceful_timeout > 0:
            with contextlib.suppress(QmpError, OSError):
                client = self.qmp(vm)
                client.execute("system_powerdown")
                client.close()
            deadline = time.monotonic() + graceful_timeout
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.2)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.05)

    def remove(self, placement: Placement) -> None:
        """Stop the machine and delete its folder: nothing of it is left."""
        vm = placement.vm
        self.stop(placement, graceful_timeout=0)
        if self.vm_dir(vm).exists():
            shutil.rmtree(self.vm_dir(vm))
        shutil.rmtree(self._runtime(vm), ignore_errors=True)


def _flush(client: QmpClient) -> None:
    """Make everything QEMU cached durable: pausing the VM drains and flushes every disk."""
    if client.execute("query-status").get("running"):
        client.execute("stop")
        client.execute("cont")
    else:
        client.execute("stop")


def _backing(path: Path) -> str | None:
    r = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise DiskError(f"cannot inspect {path}: {r.stderr.strip()}")
    value = json.loads(r.stdout).get("backing-filename")
    return str(value) if value else None


def _opt(value: str | Path) -> str:
    return str(value).replace(",", ",,")


def _check_ports(ports: Sequence[int]) -> list[int]:
    """The guest ports, each once, in order; refused unless TCP port numbers."""
    out: list[int] = []
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise UsageError(f"{p!r} is not a TCP port")
        if p not in out:
            out.append(p)
    return out


def _peer_addresses(peers: Sequence[Peer]) -> dict[str, str]:
    """Each peer name's guest-visible address: 10.0.2.100, .101, ... by first appearance."""
    addresses: dict[str, str] = {}
    for peer in peers:
        if not 1 <= peer.port <= 65535 or not 1 <= peer.host_port <= 65535:
            raise UsageError(f"peer {peer.name}: ports must be TCP port numbers")
        if not peer.host or any(c.isspace() for c in peer.host):
            raise UsageError(f"peer {peer.name}: bad host {peer.host!r}")
        if peer.name not in addresses:
            if len(addresses) == MAX_PEERS:
                raise UsageError(f"at most {MAX_PEERS} peers")
            addresses[peer.name] = str(PEER_BASE + len(addresses))
    return addresses




def _prepare(settings: LocalSettings) -> None:
    if settings.path.exists() and not settings.path.is_dir():
        raise UsageError(f"{settings.path} exists and is not a folder")
    settings.path.mkdir(parents=True, exist_ok=True)


PLUGIN = register(TargetPlugin(
    kind="local", summary="This host's KVM/QEMU: instant recovery from the repository over NBD.",
    config=LocalSettings, capabilities=CAPABILITIES, open=LocalTarget, prepare=_prepare))
