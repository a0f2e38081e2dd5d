"""The datastore reader and the session's trust, against vcsim's real ``/folder`` (through the
CBT shim's TLS) — and the extent bookkeeping that decides what is never read."""

from __future__ import annotations

import pytest

from rehost.disks.extent import Extent
from rehost.sources.vsphere_api import Session, VsphereError
from rehost.sources.vsphere_http import DatastoreDisk, Endpoint, ThumbprintMismatch
from rehost.testkit.vcsim.vm import PlacedVm
from tests.sources.conftest import VsphereLab


def _disk(endpoint: Endpoint, vm: PlacedVm, allocated: list[Extent] | None = None) -> DatastoreDisk:
    ds, path = vm.file_name[1:].split("] ", 1)
    return DatastoreDisk(endpoint, "DC0", ds, path.replace(".vmdk", "-flat.vmdk"), vm.flat.stat().st_size,
                         allocated)


def test_extents_report_unallocated_areas_as_zero() -> None:
    d = DatastoreDisk(Endpoint("http", "127.0.0.1", 1, "c"), "DC0", "ds", "x-flat.vmdk", 100,
                      [Extent(10, 20), Extent(50, 10)])
    assert list(d.extents()) == [Extent(0, 10, True), Extent(10, 20), Extent(30, 20, True), Extent(50, 10),
                                 Extent(60, 40, True)]
    assert list(d.extents(15, 40)) == [Extent(15, 15), Extent(30, 20, True), Extent(50, 5)]
    whole = DatastoreDisk(Endpoint("http", "127.0.0.1", 1, "c"), "DC0", "ds", "x-flat.vmdk", 100)
    assert list(whole.extents()) == [Extent(0, 100)]


def test_ranges_read_over_pinned_tls_are_the_file_bytes(vcsim: VsphereLab, vsphere_vm: PlacedVm) -> None:
    with Session(vcsim.shim.host, "u", "p", thumbprint=vcsim.shim.thumbprint) as s:
        disk = _disk(s.endpoint, vsphere_vm)
        try:
            data = vsphere_vm.flat.read_bytes()
            pieces = [(off, bytearray(n)) for off, n in [(0, 512), (1 << 20, 4096), (5 << 20, 9 << 20),
                                                         (len(data) - 4096, 4096)]]
            assert disk.readinto_many(pieces) == sum(len(b) for _, b in pieces)
            for off, buf in pieces:
                assert bytes(buf) == data[off : off + len(buf)]
            assert disk.bytes_read == sum(len(b) for _, b in pieces)
        finally:
            disk.close()


def test_a_wrong_pin_is_refused_before_anything_is_sent(vcsim: VsphereLab, vsphere_vm: PlacedVm) -> None:
    with pytest.raises(VsphereError, match="thumbprint"):
        Session(vcsim.shim.host, "u", "p", thumbprint="ab" * 20)
    with Session(vcsim.shim.host, "u", "p", thumbprint=vcsim.shim.thumbprint) as s:
        good = s.endpoint
    reads = vcsim.shim.folder_reads
    bad = Endpoint(good.scheme, good.host, good.port, good.cookie, thumbprint="cd" * 20)
    disk = _disk(bad, vsphere_vm)
    try:
        with pytest.raises(ThumbprintMismatch):
            disk.readinto(0, bytearray(512))
    finally:
        disk.close()
    assert vcsim.shim.folder_reads == reads  # the request (and its cookie) never left



def test_a_cycle_looks_up_only_its_vm(vcsim: VsphereLab, vsphere_vm: PlacedVm) -> None:
    with Session(vcsim.shim.host, "u", "p", thumbprint=vcsim.shim.thumbprint) as s:
        vm = s.vm(vsphere_vm.moref, "DC0")
        assert vm is not None and vm.name == vsphere_vm.name and vm.nics == ((vsphere_vm.mac, "VM Network"),)
        assert [d.flat_path for d in vm.disks] == [f"{vsphere_vm.name}/{vsphere_vm.name}-flat.vmdk"]
        assert vm.disks[0].controller == "scsi" and vm.cpus == 2 and vm.memory_mib == 256
        assert s.vm("vm-999999", "DC0") is None
