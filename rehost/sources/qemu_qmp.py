"""A running QEMU's disks, found over QMP: which block nodes are the guest's writable disks,
under which stable names, and where their dirty bitmaps live.

QEMU serves ONE client per QMP socket, so rehost gets its own monitor (``-qmp
unix:/run/vm1-rehost.sock,server=on,wait=off`` next to libvirt's). Disks are named by
``QemuDisk.ref``: the drive/device id or a user-given node name — QEMU's automatic node names
(``#block123``) change at every start (verified).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import UsageError

QMP_TIMEOUT = 15.0
#: Block drivers that only pass I/O to their child: bitmaps belong on the node below.
FILTER_DRIVERS = frozenset({
    "copy-before-write", "throttle", "copy-on-read", "preallocate", "compress",
    "blkdebug", "blklogwrites", "snapshot-access",
})


@dataclass(frozen=True)
class QemuDisk:
    """A writable disk of a running QEMU. ``node_name`` is where bitmaps live (the format
    node, below any filter); ``device`` the drive id or device id; ``ref`` the stable name
    to store (the vault's ``DiskRow.path``)."""

    index: int
    node_name: str
    device: str
    size: int
    format: str
    filename: str
    qdev: str = ""
    #: qcow2 v3 keeps bitmaps across a clean QEMU restart; others lose them at exit.
    bitmaps_persist: bool = False

    @property
    def ref(self) -> str:
        if self.device:
            return self.device
        if self.node_name and not self.node_name.startswith("#"):
            return self.node_name
        return self.qdev

    def matches(self, ref: str) -> bool:
        return ref in {self.ref, self.device, self.node_name, self.qdev} and bool(ref)


def connect_qmp(socket_path: Path, timeout: float = QMP_TIMEOUT) -> QmpClient:
    """A connected QMP client, or a ``UsageError`` that says what is wrong with the socket."""
    path = Path(socket_path)
    if not path.exists():
        raise UsageError(
            f"QMP socket {path} does not exist: is QEMU running with "
            f"-qmp unix:{path},server=on,wait=off ?"
        )
    if not path.is_socket():
        raise UsageError(f"{path} is not a UNIX socket (give QEMU's -qmp socket)")
    client = QmpClient(path, timeout=timeout)
    try:
        client.connect(deadline=time.monotonic())  # one attempt: the socket exists
    except QmpError as exc:
        client.close()
        raise UsageError(
            f"{path} did not answer as a QMP monitor ({exc}); QEMU serves one client per QMP "
            "socket: give rehost a -qmp socket of its own"
        ) from None
    except ValueError:  # not JSON: some other service
        client.close()
        raise UsageError(f"{path} is not a QMP monitor") from None
    return client


def commands(qmp: QmpClient) -> set[str]:
    """The QMP commands this QEMU offers (a VM has system_powerdown; a storage daemon not)."""
    return {str(c["name"]) for c in qmp.execute("query-commands")}


def _children(qmp: QmpClient) -> dict[str, dict[str, str]]:
    """node -> {edge name: child node} (only asked when a filter hides the disk node)."""
    graph = qmp.execute("x-debug-query-block-graph")
    names = {n["id"]: str(n["name"]) for n in graph["nodes"] if n["type"] == "block-driver"}
    out: dict[str, dict[str, str]] = {}
    for e in graph["edges"]:
        if e["parent"] in names and e["child"] in names:
            out.setdefault(names[e["parent"]], {})[str(e["name"])] = names[e["child"]]
    return out


def _below_filters(node: str, named: dict[str, dict[str, Any]], qmp: QmpClient) -> str:
    children: dict[str, dict[str, str]] | None = None
    while named.get(node, {}).get("drv") in FILTER_DRIVERS:
        children = children if children is not None else _children(qmp)
        edges = children.get(node, {})
        child = edges.get("file") or edges.get("backing")
        if child is None:
            break
        node = child
    return node


def _disk(index: int, node: str, device: str, qdev: str, info: dict[str, Any]) -> QemuDisk:
    image = info.get("image") or {}
    specific = (image.get("format-specific") or {}).get("data") or {}
    fmt = str(info.get("drv", ""))
    return QemuDisk(
        index, node, device, int(image.get("virtual-size", 0)), fmt,
        str(image.get("filename") or info.get("file", "")), qdev,
        bitmaps_persist=fmt == "qcow2" and specific.get("compat") == "1.1",
    )


def list_disks(qmp: QmpClient) -> list[QemuDisk]:
    """Writable disks with a medium, in QEMU's order (the same at every start).

    A VM: every block device attached to a guest device, except removable ones (CD-ROM,
    floppy), empty drives and read-only ones. A qemu-storage-daemon (no guest devices): the
    writable root nodes of its block graph. Our own fleece nodes are never disks.
    """
    named = {str(n["node-name"]): n for n in qmp.execute("query-named-block-nodes", {"flat": True})}
    disks: list[QemuDisk] = []
    if "system_powerdown" in commands(qmp):
        for b in qmp.execute("query-block"):
            ins = b.get("inserted")
            if not b.get("qdev") or b.get("removable") or ins is None or ins.get("ro"):
                continue
            node = _below_filters(str(ins["node-name"]), named, qmp)
            qdev = str(b["qdev"])
            device = str(b.get("device") or "") or _qdev_id(qdev)
            disks.append(_disk(len(disks), node, device, qdev, named.get(node, ins)))
        return disks
    children = _children(qmp)
    below = {c for edges in children.values() for c in edges.values()}
    for name, info in named.items():
        if name in below or name.startswith("rehost-") or info.get("ro"):
            continue
        node = _below_filters(name, named, qmp)
        disks.append(_disk(len(disks), node, "", "", named[node]))
    return disks


def _qdev_id(qdev: str) -> str:
    """``/machine/peripheral/ID/virtio-backend`` -> ``ID`` (a user-given, stable device id)."""
    prefix = "/machine/peripheral/"
    return qdev[len(prefix):].split("/")[0] if qdev.startswith(prefix) else ""


def discover(qmp_socket: Path) -> list[QemuDisk]:
    """The disks of the QEMU behind ``qmp_socket`` (asks QMP; QEMU keeps running)."""
    qmp = connect_qmp(qmp_socket)
    try:
        disks = list_disks(qmp)
    finally:
        qmp.close()
    if not disks:
        raise UsageError(f"the QEMU behind {qmp_socket} has no writable disk")
    return disks
