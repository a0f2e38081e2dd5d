"""The vSphere API as the vSphere source uses it: a pinned session, the property collector,
tasks, and the inventory of VMs (pyvmomi, imported lazily: it costs ~0.3 s).

Why the property collector everywhere: it asks only for the properties named, in one round
trip, and leaves unset ones out. Reading an unset property through pyvmomi's attribute access
(``vm.snapshot`` with no snapshot) broke the connection on vcsim 0.24.2, and every attribute
is a round trip on a real vCenter. Tasks are awaited the same way (``info.state`` and
``info.error`` only): pyvmomi's own task helper raises after ``RemoveSnapshot_Task``, whose
entity is gone when it ends.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from rehost.errors import RehostError, UsageError
from rehost.sources import credentials
from rehost.sources.vsphere_http import Endpoint, normalize_thumbprint, tls_context

#: where the password comes from (never stored, never logged)
PASSWORD_ENV = "REHOST_VSPHERE_PASSWORD"


class VsphereError(RehostError):
    """vSphere refused an operation or a task failed."""


def password(user: str, host: str) -> str:
    return credentials.password(PASSWORD_ENV, user, host)


def split_host(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    try:
        return name, int(port) if port else 443
    except ValueError:
        raise UsageError(f"--host {host!r}: give HOST or HOST:PORT") from None


@dataclass(frozen=True)
class VDisk:
    key: int
    capacity: int
    #: the backing's datastore path: ``[datastore] folder/name.vmdk``
    file_name: str
    datastore: str
    controller: str | None
    change_id: str | None = None
    #: the backing is a delta or sparse disk (another snapshot's child): no flat file to read
    has_parent: bool = False

    @property
    def flat_path(self) -> str:
        """``folder/name-flat.vmdk`` inside the datastore."""
        path = self.file_name.split("]", 1)[1].strip()
        return path[: -len(".vmdk")] + "-flat.vmdk" if path.endswith(".vmdk") else path


@dataclass(frozen=True)
class VmInfo:
    """What the inventory says of one VM, read in one property-collector call."""

    moref: str
    name: str
    datacenter: str
    cpus: int
    memory_mib: int
    firmware: str
    guest_os: str | None
    power_state: str
    tools: str
    cbt: bool
    disks: tuple[VDisk, ...] = ()
    #: (MAC, port group or network name)
    nics: tuple[tuple[str, str], ...] = ()
    snapshots: tuple[tuple[str, str], ...] = field(default=())  # (moref, name), whole tree

    def summary(self) -> str:
        return (f"{self.name} ({self.moref}, {self.power_state}, {self.cpus} CPU, {self.memory_mib} MiB, "
                f"{len(self.disks)} disk(s), Tools {self.tools}, CBT {'on' if self.cbt else 'off'})")


VM_PROPERTIES = [
    "name", "config.hardware.numCPU", "config.hardware.memoryMB", "config.firmware", "config.guestFullName",
    "config.guestId", "runtime.powerState", "guest.toolsRunningStatus", "config.changeTrackingEnabled",
    "config.hardware.device", "snapshot.rootSnapshotList",
]


class Session:
    """One logged-in vSphere session; ``with Session(...) as s:`` logs out at the end."""

    def __init__(self, host: str, user: str, secret: str, *, thumbprint: str | None = None,
                 insecure: bool = False, protocol: str = "https") -> None:
        from pyVim.connect import SmartConnect

        self.host, self.port = split_host(host)
        self.thumbprint = normalize_thumbprint(thumbprint) if thumbprint else None
        self.insecure = insecure
        self.protocol = protocol
        try:
            self.si: Any = SmartConnect(
                protocol=protocol, host=self.host, port=self.port, user=user, pwd=secret,
                sslContext=tls_context(self.thumbprint, insecure) if protocol == "https" else None,
                connectionPoolTimeout=-1)
        except Exception as e:  # pyvmomi raises vim.fault.InvalidLogin, ssl errors, socket errors
            raise VsphereError(f"cannot log in to {host} as {user}: {getattr(e, 'msg', None) or e}") from e
        self.content = self.si.RetrieveContent()

    def close(self) -> None:
        from pyVim.connect import Disconnect

        with contextlib.suppress(Exception):  # the session may be gone: logging out is a courtesy
            Disconnect(self.si)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> Endpoint:
        """The datastore HTTP side of this session (same host, trust and cookie)."""
        cookie = str(self.si._stub.cookie).split(";", 1)[0]
        return Endpoint(self.protocol, self.host, self.port, cookie, self.thumbprint, self.insecure)

    # -- the property collector --------------------------------------------------------

    def props(self, obj: Any, paths: list[str]) -> dict[str, Any]:
        """The named properties of one object; unset ones are absent."""
        from pyVmomi import vmodl

        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
                             propSet=[pc.PropertySpec(type=type(obj), pathSet=paths, all=False)])
        res = self.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        out: dict[str, Any] = {}
        for o in (res.objects if res else []):
            for p in o.propSet:
                out[p.name] = p.val
        return out

    def wait(self, task: Any, what: str, timeout: float = 600) -> Any:
        """A task's result once it succeeded; VsphereError with vSphere's message if it failed."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            info = self.props(task, ["info.state", "info.error"])
            state = str(info.get("info.state"))
            if state == "success":
                if what.startswith("remove"):
                    return None
                return self.props(task, ["info.result"]).get("info.result")
            if state == "error":
                err = info.get("info.error")
                raise VsphereError(f"{what} failed: {getattr(err, 'localizedMessage', None) or err}")
            if time.monotonic() > deadline:
                raise VsphereError(f"{what} did not finish within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    # -- the inventory ---------------------------------------------------------------

    def vms(self) -> list[VmInfo]:
        """Every VM of every datacenter, with its hardware, disks, NICs and snapshots."""
        from pyVmomi import vim, vmodl

        pc = vmodl.query.PropertyCollector
        out: list[VmInfo] = []
        dcs = self.content.viewManager.CreateContainerView(self.content.rootFolder, [vim.Datacenter], True)
        try:
            datacenters = [(dc, str(self.props(dc, ["name"]).get("name"))) for dc in dcs.view]
        finally:
            dcs.Destroy()
        for dc, dc_name in datacenters:
            view = self.content.viewManager.CreateContainerView(dc.vmFolder, [vim.VirtualMachine], True)
            try:
                traverse = pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)
                spec = pc.FilterSpec(
                    objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
                    propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPERTIES, all=False)])
                res = self.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
                objects = list(res.objects) if res else []
                while res is not None and res.token:
                    res = self.content.propertyCollector.ContinueRetrievePropertiesEx(res.token)
                    objects += list(res.objects)
            finally:
                view.Destroy()
            for o in objects:
                values = {p.name: p.val for p in o.propSet}
                out.append(_vm_info(o.obj._moId, dc_name, values))
        return out

    def vm(self, moref: str, datacenter: str) -> VmInfo | None:
        """One VM by moref, in one property-collector call (a cycle must not list a vCenter's
        thousands of VMs); None if it is gone."""
        from pyVmomi import vmodl

        try:
            values = self.props(self.vm_object(moref), VM_PROPERTIES)
        except vmodl.fault.ManagedObjectNotFound:
            return None
        return _vm_info(moref, datacenter, values) if values else None

    def vm_object(self, moref: str) -> Any:
        from pyVmomi import vim

        return vim.VirtualMachine(moref, self.si._stub)

    def find(self, wanted: str) -> VmInfo:
        """The VM whose moref or name is ``wanted``; a UsageError listing the VMs otherwise."""
        vms = self.vms()
        hits = [v for v in vms if v.moref == wanted] or [v for v in vms if v.name == wanted]
        if len(hits) == 1:
            return hits[0]
        listing = "\n  ".join(v.summary() for v in sorted(vms, key=lambda v: v.name)) or "(none)"
        if hits:
            raise UsageError(f"{len(hits)} VMs are named {wanted!r}: give the moref (--vm vm-NN):\n"
                             f"  {listing}")
        raise UsageError(f"no VM {wanted!r} on {self.host}; the VMs are:\n  {listing}")


_CONTROLLERS = (("Nvme", "nvme"), ("AHCI", "sata"), ("Sata", "sata"), ("IDE", "ide"), ("SCSI", "scsi"),
                ("LsiLogic", "scsi"), ("BusLogic", "scsi"), ("ParaVirtual", "scsi"))


def _controller(device: Any) -> str | None:
    name = type(device).__name__
    return next((bus for word, bus in _CONTROLLERS if word in name), None)


def _vm_info(moref: str, datacenter: str, v: dict[str, Any]) -> VmInfo:
    from pyVmomi import vim

    devices = list(v.get("config.hardware.device") or [])
    by_key = {d.key: d for d in devices}
    disks, nics = [], []
    for d in devices:
        if isinstance(d, vim.vm.device.VirtualDisk):
            b = d.backing
            file_name = str(getattr(b, "fileName", "") or "")
            ds = file_name[1:].split("]", 1)[0] if file_name.startswith("[") else ""
            capacity = int(d.capacityInBytes or 0) or int(d.capacityInKB or 0) * 1024
            disks.append(VDisk(int(d.key), capacity, file_name, ds, _controller(by_key.get(d.controllerKey)),
                               getattr(b, "changeId", None) or None, getattr(b, "parent", None) is not None))
        elif isinstance(d, vim.vm.device.VirtualEthernetCard):
            b = d.backing
            network = (getattr(b, "deviceName", None)
                       or getattr(getattr(b, "port", None), "portgroupKey", None) or "default")
            nics.append((str(d.macAddress or ""), str(network)))
    snaps: list[tuple[str, str]] = []

    def walk(trees: Any) -> None:
        for t in trees or []:
            snaps.append((t.snapshot._moId, str(t.name)))
            walk(t.childSnapshotList)

    walk(v.get("snapshot.rootSnapshotList"))
    return VmInfo(
        moref=moref, name=str(v.get("name", moref)), datacenter=datacenter,
        cpus=int(v.get("config.hardware.numCPU") or 1),
        memory_mib=int(v.get("config.hardware.memoryMB") or 0),
        firmware=str(v.get("config.firmware") or "bios"),
        guest_os=v.get("config.guestFullName") or v.get("config.guestId") or None,
        power_state=str(v.get("runtime.powerState") or "unknown"),
        tools=str(v.get("guest.toolsRunningStatus") or "guestToolsNotRunning"),
        cbt=bool(v.get("config.changeTrackingEnabled")), disks=tuple(disks), nics=tuple(nics),
        snapshots=tuple(snaps))
