"""The vSphere source's fixtures: one vcsim (govmomi's simulator, built from Debian's Go
sources) per session behind the CBT shim (a declared test double: vcsim has no changed-block
tracking), and per test a VM on it whose disk is a private copy of the tiny Linux image."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rehost.testkit.vcsim import Vcsim, missing_reason
from rehost.testkit.vcsim.cbt_shim import CbtShim
from rehost.testkit.vcsim.vm import PlacedVm, create_vm

_names = itertools.count()


@dataclass
class VsphereLab:
    vcsim: Vcsim
    shim: CbtShim


@pytest.fixture(scope="session")
def vcsim() -> Iterator[VsphereLab]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with Vcsim() as vc, CbtShim(vc) as shim:
        yield VsphereLab(vc, shim)


@pytest.fixture
def vsphere_vm(vcsim: VsphereLab, tiny_image: Path) -> PlacedVm:
    """A powered-on VM named ``tinyN`` with the tiny Linux as its only disk, tracked by the shim."""
    placed = create_vm(vcsim.vcsim, tiny_image, f"tiny{next(_names)}")
    vcsim.shim.track(placed.moref, placed.device_key, placed.file_name, placed.flat)
    return placed


def power_state(lab: VsphereLab, moref: str) -> str:
    """The VM's power state as vcsim itself has it."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from rehost.testkit.vcsim.vm import connect

    si = connect(lab.vcsim)
    try:
        return str(vim.VirtualMachine(moref, si._stub).runtime.powerState)
    finally:
        Disconnect(si)


def snapshot_names(lab: VsphereLab, moref: str) -> list[str]:
    """The VM's snapshots as vcsim itself has them (asked directly, not through rehost)."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim, vmodl

    from rehost.testkit.vcsim.vm import connect

    si = connect(lab.vcsim)
    try:
        pc = vmodl.query.PropertyCollector
        vm = vim.VirtualMachine(moref, si._stub)
        wanted = pc.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot.rootSnapshotList"])
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=vm)], propSet=[wanted])
        res = si.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        names: list[str] = []

        def walk(trees: list[vim.vm.SnapshotTree]) -> None:
            for t in trees or []:
                names.append(str(t.name))
                walk(t.childSnapshotList)

        for o in res.objects if res else []:
            for p in o.propSet:
                walk(p.val)
        return names
    finally:
        Disconnect(si)
