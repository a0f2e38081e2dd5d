"""One vSphere cycle's snapshot and changed-block tracking (CBT) steps.

The order matters and is the one Azure Migrate's agentless path and Forklift's warm
migration use: remove snapshots an earlier (killed) cycle left, make sure CBT is on, take a
snapshot, ask ``QueryChangedDiskAreas`` of that snapshot against the parent point's
``changeId``, read, and remove the snapshot whatever happened. Users of those tools report
orphaned snapshots (a VM's delta disks grow until the datastore fills) and CBT silently off:
so every rehost snapshot is named ``rehost-cycle-...`` and removed on the next cycle at the
latest, and a cycle that could not use CBT says why in its notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rehost.disks.extent import Extent
from rehost.sources.vsphere_api import Session, VDisk, VmInfo, VsphereError

#: every snapshot rehost takes starts with this: the next cycle removes any it finds
PREFIX = "rehost-cycle-"


def snapshot_name(machine_id: str) -> str:
    return f"{PREFIX}{machine_id[:12] or 'vm'}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def remove_leftovers(s: Session, vm: VmInfo) -> list[str]:
    """Remove the rehost snapshots still on the VM (a cycle that was killed); their names."""
    from pyVmomi import vim

    removed = []
    for moref, name in vm.snapshots:
        if name.startswith(PREFIX):
            snap = vim.vm.Snapshot(moref, s.si._stub)
            s.wait(snap.RemoveSnapshot_Task(removeChildren=False), f"removing snapshot {name}")
            removed.append(name)
    return removed


def ensure_cbt(s: Session, vm: VmInfo) -> bool:
    """Turn CBT on if it is off; True if it was off (this cycle cannot ask what changed).

    On a real host the setting takes effect at the next snapshot (stun/unstun), which this
    cycle's own snapshot is: its changeIds are the first ones.
    """
    from pyVmomi import vim

    if vm.cbt:
        return False
    task = s.vm_object(vm.moref).ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True))
    s.wait(task, f"turning changed-block tracking on for {vm.name}")
    return True


def take(s: Session, vm: VmInfo, name: str, quiesce: bool) -> Any:
    """A snapshot without memory (disks only), quiesced through VMware Tools if asked."""
    task = s.vm_object(vm.moref).CreateSnapshot_Task(
        name=name, description="rehost replication cycle: removed when the cycle ends", memory=False,
        quiesce=quiesce)
    return s.wait(task, f"snapshot {name} of {vm.name}")


def remove(s: Session, snapshot: Any, name: str) -> None:
    s.wait(snapshot.RemoveSnapshot_Task(removeChildren=False), f"removing snapshot {name}")


def snapshot_disks(s: Session, snapshot: Any, vm: VmInfo) -> list[VDisk]:
    """The disks as the snapshot froze them, with their changeIds (the point's new ones)."""
    from rehost.sources.vsphere_api import _vm_info

    devices = s.props(snapshot, ["config.hardware.device"]).get("config.hardware.device")
    return list(_vm_info(vm.moref, vm.datacenter, {"config.hardware.device": devices}).disks)


@dataclass(frozen=True)
class Refused:
    """vSphere would not answer QueryChangedDiskAreas for this changeId, and why."""

    reason: str


def changed_areas(
    s: Session, vm: VmInfo, snapshot: Any, disk: VDisk, change_id: str
) -> list[Extent] | Refused:
    """The areas of ``disk`` that changed between ``change_id`` and ``snapshot`` (``*``: the
    allocated areas), in as many calls as the host needs (each covers ``length`` bytes from
    ``startOffset``, as the API documents)."""
    from pyVmomi import vim, vmodl

    obj = s.vm_object(vm.moref)
    out: list[Extent] = []
    offset = 0
    while offset < disk.capacity:
        try:
            info = obj.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=disk.key, startOffset=offset,
                                             changeId=change_id)
        except (vim.fault.VimFault, vmodl.MethodFault) as e:
            return Refused(f"{type(e).__name__}: {getattr(e, 'msg', '') or e}")
        for area in info.changedArea or []:
            start, length = int(area.start), int(area.length)
            if out and out[-1].end == start:
                out[-1] = Extent(out[-1].start, out[-1].length + length)
            else:
                out.append(Extent(start, length))
        if int(info.length) <= 0:
            raise VsphereError(f"QueryChangedDiskAreas on {disk.file_name} made no progress at {offset}")
        offset = int(info.startOffset) + int(info.length)
    return out
