"""vcsim starts from its Debian-built binary, and the CBT shim (a test double) answers
QueryChangedDiskAreas from the disk file's real bytes, through pyvmomi over pinned TLS."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from rehost.testkit.vcsim import missing_reason
from rehost.testkit.vcsim.cbt_shim import CbtShim

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


def _wait(task: Any) -> Any:
    while task.info.state not in ("success", "error"):
        time.sleep(0.05)
    assert task.info.state == "success", task.info.error
    return task.info.result


def test_shim_reports_changes_between_snapshots(tmp_path: Path) -> None:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl

    from rehost.testkit.vcsim import Vcsim
    from rehost.testkit.vcsim.vm import create_vm

    img = tmp_path / "d.raw"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"x" * 8192)
    with Vcsim() as vc, CbtShim(vc) as shim:
        placed = create_vm(vc, img, "t")
        shim.track(placed.moref, placed.device_key, placed.file_name, placed.flat)
        si = SmartConnect(host="127.0.0.1", port=shim.port, user="u", pwd="p",
                          sslContext=ssl._create_unverified_context())
        try:
            content = si.content
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
            vm = next(v for v in view.view if v._moId == placed.moref)
            _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))

            def snap() -> tuple[Any, str]:
                s = _wait(vm.CreateSnapshot_Task(name="s", description="", memory=False, quiesce=False))
                disk = next(d for d in s.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
                return s, disk.backing.changeId

            def areas(s: Any, change_id: str) -> Any:
                return vm.QueryChangedDiskAreas(snapshot=s, deviceKey=placed.device_key, startOffset=0,
                                                changeId=change_id)

            s1, id1 = snap()
            r = areas(s1, "*")
            assert [(a.start, a.length) for a in r.changedArea] == [(1 << 20, 8192)]
            with open(placed.flat, "r+b") as f:
                f.seek(3 << 20)
                f.write(b"y" * 4096)
            s2, id2 = snap()
            assert id1 != id2
            r = areas(s2, id1)
            assert [(a.start, a.length) for a in r.changedArea] == [(3 << 20, 4096)]
            shim.reset()  # a CBT reset: the next snapshot's host no longer knows id2
            s3, id3 = snap()
            assert id3 not in (id1, id2)
            with pytest.raises(vmodl.fault.InvalidArgument):
                areas(s3, id2)
        finally:
            Disconnect(si)
