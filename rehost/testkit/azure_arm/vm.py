"""The fake's VMs really boot the managed disks' bytes, under QEMU (test fake, not Azure).

When a VM is created (Azure starts a VM when it creates it) or started, the fake downloads
its disks' blobs from Azurite into the VM's folder (sparse: only the page ranges holding
data), checks each fixed-VHD footer as Azure would, and starts ``qemu-system-x86_64`` the way
Azure boots the VM's generation:

- generation 1 (disk ``hyperVGeneration`` V1 or absent): ``-machine pc`` (i440fx, SeaBIOS), the
  disks on IDE (``format=vpc``: QEMU reads our fixed VHD at its exact size, design §11);
- generation 2 (V2): ``-machine q35`` with OVMF (``/usr/share/OVMF/OVMF_CODE.fd`` and a copy of
  its variables); without OVMF the VM fails with a provisioning error saying so.

Memory is the size's, capped at 512 MiB; one vCPU; TCG unless told otherwise (``accel``).
No network device at all (``-nic none``): the fake's NICs are records, not networks. The serial
port goes to ``<folder>/vm-<name>/serial.log``, which boot diagnostics hand out.

What this proves and what it does not: QEMU has no Hyper-V storage or network devices
(hv_storvsc/hv_netvsc), so a boot here proves the bytes and the boot chain (MBR or EFI,
boot loader, kernel, a root file system found on an IDE/AHCI disk), not the guest's Hyper-V
drivers. Data disks are on IDE too (at most 3), not SCSI as on Azure. The guest's writes stay
in the fake's local copy for the VM's lifetime (Azure keeps them in the managed disk); the
managed disk's blob is not updated.

QEMU processes are children of the fake's server process, each with a pidfile; ``stop_all``
(the server's shutdown, and ``ArmFake.stop``) ends every one of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rehost.process import alive
from rehost.targets.azure.vhd import FOOTER_SIZE, check_fixed_vhd
from rehost.testkit.azure_arm.blobs import Storage

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
MAX_MEMORY_MB = 512
MAX_DATA_DISKS = 3


class VmStartError(Exception):
    """QEMU could not be started for the VM; the text says why (a provisioning error)."""


@dataclass(frozen=True)
class DiskImage:
    container: str  # the disk's blob container in Azurite (md-...)
    name: str


def qemu_pids(folder: Path) -> list[int]:
    """QEMU pids recorded in the fake's VM folders (that still run QEMU)."""
    out = []
    for pidfile in folder.glob("vm-*/qemu.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"qemu-system" in f.read():
                    out.append(pid)
        except (OSError, ValueError):
            continue
    return out


def kill_pid(pid: int, grace: float = 3.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):  # gone, or a zombie its parent has yet to reap
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class VmRunner:
    def __init__(self, folder: Path, storage: Storage, accel: str = "tcg",
                 qemu: str = "qemu-system-x86_64") -> None:
        self.folder = folder
        self.storage = storage
        self.accel = accel
        self.qemu = qemu
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def vm_dir(self, name: str) -> Path:
        return self.folder / f"vm-{name.lower()}"

    def serial_log(self, name: str) -> bytes:
        try:
            return (self.vm_dir(name) / "serial.log").read_bytes()
        except OSError:
            return b""

    def running(self, name: str) -> bool:
        with self._lock:
            proc = self._procs.get(name.lower())
            return proc is not None and proc.poll() is None

    def exit_code(self, name: str) -> int | None:
        with self._lock:
            proc = self._procs.get(name.lower())
            return None if proc is None else proc.poll()

    def stderr(self, name: str) -> str:
        try:
            return (self.vm_dir(name) / "qemu.err").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def _local_copy(self, vm: Path, index: int, disk: DiskImage) -> Path:
        dest = vm / f"disk{index}.vhd"
        if not dest.exists():
            tmp = dest.with_suffix(".part")
            size = self.storage.download_sparse(disk.container, tmp)
            with open(tmp, "rb") as f:
                f.seek(size - FOOTER_SIZE)
                footer = f.read(FOOTER_SIZE)
            try:
                check_fixed_vhd(footer, size)
            except Exception as e:
                tmp.unlink(missing_ok=True)
                raise VmStartError(f"disk {disk.name} is not a bootable fixed VHD: {e}") from None
            tmp.replace(dest)
        return dest

    def start(self, name: str, disks: list[DiskImage], generation: str, memory_mb: int) -> None:
        """Download the disks (first start only) and start QEMU; ``VmStartError`` if it cannot."""
        if self.running(name):
            return
        if shutil.which(self.qemu) is None:
            raise VmStartError(f"{self.qemu} is not installed on the fake's host")
        if len(disks) - 1 > MAX_DATA_DISKS:
            raise VmStartError(f"the fake boots at most {MAX_DATA_DISKS} data disks (IDE), "
                               f"not {len(disks) - 1}")
        vm = self.vm_dir(name)
        vm.mkdir(parents=True, exist_ok=True)
        files = [self._local_copy(vm, i, d) for i, d in enumerate(disks)]
        cmd = [self.qemu, "-name", name, "-accel", self.accel, "-m", str(min(memory_mb, MAX_MEMORY_MB)),
               "-smp", "1", "-display", "none", "-no-user-config", "-nodefaults", "-nic", "none",
               "-chardev", f"file,id=ser0,path={_opt(vm / 'serial.log')}", "-serial", "chardev:ser0",
               "-pidfile", str(vm / "qemu.pid")]
        if generation.upper() == "V2":
            if not OVMF_CODE.exists() or not OVMF_VARS.exists():
                raise VmStartError(f"generation 2 VMs need UEFI firmware and the fake's host has no "
                                   f"{OVMF_CODE} (install the ovmf package)")
            vars_copy = vm / "OVMF_VARS.fd"
            if not vars_copy.exists():
                shutil.copyfile(OVMF_VARS, vars_copy)
            cmd += ["-machine", "q35",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(OVMF_CODE)}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={_opt(vars_copy)}"]
        else:
            cmd += ["-machine", "pc"]
        for i, f in enumerate(files):
            cmd += ["-drive", f"file={_opt(f)},format=vpc,if=ide,index={i},media=disk,cache=writeback"]
        (vm / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        with open(vm / "qemu.err", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        with self._lock:
            self._procs[name.lower()] = proc
        # QEMU refuses a bad command line or image at once: report that as the start's failure
        try:
            code = proc.wait(0.3)
        except subprocess.TimeoutExpired:
            return
        if code != 0:
            raise VmStartError(f"QEMU exited at start ({code}): {self.stderr(name).strip()}")

    def stop(self, name: str) -> None:
        with self._lock:
            proc = self._procs.pop(name.lower(), None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        (self.vm_dir(name) / "qemu.pid").unlink(missing_ok=True)

    def forget(self, name: str) -> None:
        """Stop the VM and drop its folder (the local disk copies and its serial log)."""
        self.stop(name)
        shutil.rmtree(self.vm_dir(name), ignore_errors=True)

    def stop_all(self) -> None:
        with self._lock:
            names = list(self._procs)
        for n in names:
            self.stop(n)
        for pid in qemu_pids(self.folder):
            kill_pid(pid)


def _opt(path: Path) -> str:
    """A path as a QEMU option value (commas doubled)."""
    return str(path).replace(",", ",,")
