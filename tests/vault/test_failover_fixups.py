"""A (test) failover's fix-up step, on the memory target judged by Azure's rules (fast).

The appliance is replaced here (``rehost.vault.fixup.apply_fixups``) by a stand-in that
really writes into the overlays it is handed (``qemu-io``) and reports a fixed inspection: the
plumbing around it is what is tested — the readiness step leaves what a fix-up repairs to it,
the staged disk is the changed copy while the point is not changed, the copy is checked again,
and the overlays go. The real fix-ups on a real Debian guest that then boots are in
``tests/vault/test_fixups_debian.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.guest.fixups import FixUp, FixUpResult
from rehost.guest.inspect import Inspection
from rehost.jobs.models import JobRow
from rehost.jobs.runner import run_job
from rehost.vault import failover, fixup
from rehost.vault.protection import find_point
from tests.inspections import UNREADY_FOR_AZURE, WARNED_FOR_AZURE, judge_memory_as_azure, seed
from tests.targets.helpers import World, world

MARK = b"FIXED-ON-THE-COPY"
AT = 3 << 20


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    judge_memory_as_azure(monkeypatch)
    with world(tmp_path, "memory", markers=("first",)) as w:
        seed(w.vault, "web", w.points[-1], UNREADY_FOR_AZURE)
        yield w


def _stand_in(after: Inspection, calls: list[tuple[list[str], str, tuple[str, ...]]]) -> object:
    def apply(disks: Sequence[str], fmt: str, kind: str, names: Sequence[str]) -> FixUpResult:
        calls.append((list(disks), kind, tuple(names)))
        assert fmt == "qcow2"
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x46 {AT} 4096", disks[0]],
                       check=True, capture_output=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0 {AT} {len(MARK)}", disks[0]],
                       check=True, capture_output=True)
        with open(disks[0] + ".mark", "wb") as f:  # where the stand-in put its bytes, for the test
            f.write(MARK)
        return FixUpResult(tuple(FixUp(n, True, f"{n} done") for n in names), UNREADY_FOR_AZURE, after, 1.0)

    return apply


def _run(w: World, kind: str = "test-failover", **params: object) -> JobRow:
    return run_job(w.vault, failover.start_job(w.vault, kind, w.machine, **params).id)


def _step(job: JobRow, name: str) -> tuple[str, str]:
    s = next(s for s in job.steps if s.name == name)
    return s.state, s.detail


def test_fix_ups_repair_the_copy_and_never_the_point(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], str, tuple[str, ...]]] = []
    monkeypatch.setattr(fixup, "apply_fixups", _stand_in(WARNED_FOR_AZURE, calls))
    point = find_point(w.vault, "web", w.points[-1])
    before = b"".join(bytes(c) if c is not None else bytes(n) for _, n, c in w.vault.repo.iter_disk(point, 0))

    job = _run(w, fixups=["dhcp", "initramfs"])
    assert job.state == "succeeded", job.error
    assert job.params["fixups"] == ["initramfs", "dhcp"]  # validated, in the order they run
    state, detail = _step(job, "readiness")
    assert state == "succeeded" and "left to the fix-ups: hv_storvsc driver (initramfs)" in detail
    assert "DHCP on the primary NIC (dhcp)" in detail
    assert job.outputs["readiness"]["left_to_fixups"] == ["hv_storvsc driver", "hv_netvsc driver",
                                                           "DHCP on the primary NIC"]
    assert [s.name for s in job.steps][3:6] == ["fix_up", "stage_disks", "create_machine"]
    assert _step(job, "fix_up") == ("succeeded", "initramfs: initramfs done; dhcp: dhcp done; the copy "
                                                  "checks warn for memory targets (1 s)")
    assert job.outputs["fixups"]["readiness_after"]["status"] == "warn"
    [(disks, kind, names)] = calls
    assert kind == "memory" and names == ("initramfs", "dhcp") and len(disks) == 1

    # the target holds the changed copy, the point is what it was, the overlays are gone
    staged = w.target().disk_path("web-test", 0).read_bytes()  # type: ignore[attr-defined]
    assert staged[AT:AT + len(MARK)] == bytes(len(MARK)) and staged[AT + 64:AT + 4096] == b"F" * (4096 - 64)
    assert staged[:AT] == before[:AT] and staged[AT + 4096:] == before[AT + 4096:]
    after = b"".join(bytes(c) if c is not None else bytes(n) for _, n, c in w.vault.repo.iter_disk(point, 0))
    assert after == before and before[AT + 64:AT + 4096] != b"F" * (4096 - 64)
    assert not fixup.folder(w.vault, "web-test").exists()
    assert "the fixed-up copy was staged, not the point" in _step(job, "stage_disks")[1]
    assert _run(w, "test-cleanup").state == "succeeded"


def test_a_fix_up_that_does_not_repair_stops_the_job(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixup, "apply_fixups", _stand_in(UNREADY_FOR_AZURE, []))
    job = _run(w, fixups=["all"])
    assert job.state == "failed"
    state, _ = _step(job, "fix_up")
    assert state == "failed" and "the fix-ups did not repair the copy: hv_storvsc driver" in job.error
    assert _step(job, "stage_disks")[0] == "pending"
    # a failed fix-up leaves no NBD server and no overlay behind (a resumed job makes them again)
    assert not fixup.folder(w.vault, "web-test").exists() and not (w.vault.root / "run" / "web-test").exists()
    assert _run(w, "test-cleanup").state == "succeeded"


def test_what_no_fix_up_repairs_still_blocks_and_names_the_fix_up(w: World) -> None:
    job = _run(w, fixups=["dhcp"])
    assert job.state == "failed" and _step(job, "readiness")[0] == "failed"
    assert "2 failed requirement(s)" in job.error and "DHCP" not in job.error.split("Fix them")[0]
    assert "or on the copy: --fix-up initramfs" in job.error
    with pytest.raises(UsageError, match="unknown fix-up 'initrd'"):
        failover.start_job(w.vault, "test-failover", "web", fixups=["initrd"])
