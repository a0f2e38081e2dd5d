"""Azure sizing and limits: pure logic, checked at the documented boundaries."""

from __future__ import annotations

import pytest

from rehost.errors import InvalidState, UsageError
from rehost.spec import DiskSpec, Firmware, MachineSpec
from rehost.targets.azure.sizing import (
    VmSize,
    check_limits,
    check_size,
    describe,
    generation,
    pick_size,
)
from rehost.targets.base import VerifyCheck

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

#: real sizes (cores, memory in MiB, max data disks, generations) as Azure lists them
B1S = VmSize("Standard_B1s", 1, 1024, 2)
B2S = VmSize("Standard_B2s", 2, 4096, 4)
D2SV3 = VmSize("Standard_D2s_v3", 2, 8192, 4)
D4SV3 = VmSize("Standard_D4s_v3", 4, 16384, 8)
A1V2 = VmSize("Standard_A1_v2", 1, 2048, 2, ("V1",))
#: shuffled on purpose: the pick must not depend on the catalog's order
CATALOG = [D4SV3, A1V2, D2SV3, B2S, B1S]


def machine(*sizes: int, firmware: Firmware = Firmware.BIOS, cpus: int = 1,
            memory_mib: int = 512) -> MachineSpec:
    disks = tuple(DiskSpec(i, s, f"disk{i}") for i, s in enumerate(sizes))
    return MachineSpec("web1", disks, firmware=firmware, cpus=cpus, memory_mib=memory_mib)


def by_name(checks: list[VerifyCheck]) -> dict[str, VerifyCheck]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


# -- generation, limits ----------------------------------------------------------------------


def test_generation_follows_firmware() -> None:
    assert generation(machine(GiB)) == "V1"
    assert generation(machine(GiB, firmware=Firmware.UEFI)) == "V2"


def test_gen1_os_disk_2tib_boundary() -> None:
    ok = by_name(check_limits(machine(2 * TiB)))["disk 0 size"]
    assert ok.ok, ok.detail
    bad = by_name(check_limits(machine(2 * TiB + MiB)))["disk 0 size"]
    assert not bad.ok
    assert "2 TiB" in bad.detail and "UEFI" in bad.detail
    # one byte over pads to 2 TiB + 1 MiB: Azure sees the padded size
    assert not by_name(check_limits(machine(2 * TiB + 1)))["disk 0 size"].ok


def test_gen2_os_disk_limit() -> None:
    uefi = Firmware.UEFI
    assert by_name(check_limits(machine(2 * TiB + MiB, firmware=uefi)))["disk 0 size"].ok
    assert by_name(check_limits(machine(4095 * GiB, firmware=uefi)))["disk 0 size"].ok
    bad = by_name(check_limits(machine(4 * TiB, firmware=uefi)))["disk 0 size"]
    assert not bad.ok
    assert "4,095 GiB" in bad.detail and "4 TiB" in bad.detail


def test_data_disk_limit() -> None:
    checks = by_name(check_limits(machine(GiB, 32767 * GiB, 32 * TiB, 33 * TiB)))
    assert checks["disk 1 size"].ok
    assert not checks["disk 2 size"].ok
    assert "32,767 GiB" in checks["disk 2 size"].detail
    assert not checks["disk 3 size"].ok
    # a data disk may be larger than any OS disk
    assert checks["disk 0 size"].ok


def test_not_whole_mib_is_reported_with_the_padding() -> None:
    checks = by_name(check_limits(machine(GiB + 512, 10 * MiB)))
    odd = checks["disk 0 alignment"]
    assert odd.ok  # rehost pads: information, not a failure
    assert "not a whole MiB" in odd.detail
    assert f"{MiB - 512:,} bytes" in odd.detail  # by how much
    assert "1,025 MiB" in odd.detail  # to what
    whole = checks["disk 1 alignment"]
    assert whole.ok and "not" not in whole.detail


def test_disk_count() -> None:
    assert by_name(check_limits(machine(*[GiB] * 65)))["disk count"].ok
    bad = by_name(check_limits(machine(*[GiB] * 67)))["disk count"]
    assert not bad.ok
    assert "66 data disks" in bad.detail and "exclude 2" in bad.detail


def test_machine_without_os_disk_or_size_fails() -> None:
    spec = MachineSpec("web1", (DiskSpec(1, GiB, "d1"), DiskSpec(2, 0, "d2")))
    checks = by_name(check_limits(spec))
    assert not checks["os disk"].ok
    assert not checks["disk 2 size"].ok


def test_everything_fine_is_all_ok() -> None:
    assert all(c.ok for c in check_limits(machine(30 * GiB, 100 * GiB)))


# -- pick_size ---------------------------------------------------------------------------------


def test_pick_smallest_fitting() -> None:
    assert pick_size(machine(GiB), CATALOG, data_disks=0) == B1S
    assert pick_size(machine(GiB, memory_mib=2048), CATALOG, data_disks=0) == A1V2
    assert pick_size(machine(GiB, cpus=2), CATALOG, data_disks=0) == B2S
    assert pick_size(machine(GiB, cpus=2, memory_mib=6144), CATALOG, data_disks=0) == D2SV3
    assert pick_size(machine(GiB, cpus=3), CATALOG, data_disks=0) == D4SV3
    # disks decide too: 3 data disks rule out the 2-disk sizes
    assert pick_size(machine(GiB), CATALOG, data_disks=3) == B2S
    assert pick_size(machine(GiB), CATALOG, data_disks=5) == D4SV3


def test_unknown_memory_counts_as_512_mib() -> None:
    assert pick_size(machine(GiB, memory_mib=0), [VmSize("tiny", 1, 256, 2), B1S],
                     data_disks=0) == B1S


def test_cores_then_memory_then_name() -> None:
    a = VmSize("b_size", 2, 4096, 4)
    b = VmSize("a_size", 2, 4096, 4)
    c = VmSize("c_size", 2, 2048, 4)
    assert pick_size(machine(GiB, cpus=2), [a, b, c], data_disks=0) == c
    assert pick_size(machine(GiB, cpus=2, memory_mib=3000), [a, b, c], data_disks=0) == b
    # cores before memory: fewer cores with more memory is the smaller size
    few = VmSize("few_cores", 1, 8192, 4)
    assert pick_size(machine(GiB), [a, few], data_disks=0) == few


def test_uefi_never_gets_a_v1_only_size() -> None:
    uefi = machine(GiB, firmware=Firmware.UEFI, memory_mib=2048)
    assert pick_size(uefi, CATALOG, data_disks=0) == B2S  # A1_v2 is smaller but V1 only
    with pytest.raises(InvalidState, match="generation 2"):
        pick_size(uefi, [A1V2], data_disks=0)
    with pytest.raises(UsageError, match="no generation 2"):
        pick_size(uefi, CATALOG, data_disks=0, requested="Standard_A1_v2")


def test_requested_size() -> None:
    assert pick_size(machine(GiB), CATALOG, data_disks=0, requested="Standard_D4s_v3") == D4SV3
    assert pick_size(machine(GiB), CATALOG, data_disks=0, requested="standard_d4s_v3") == D4SV3
    # smaller than the source is the operator's call
    assert pick_size(machine(GiB, cpus=4), CATALOG, data_disks=0, requested="Standard_B1s") == B1S


def test_requested_unknown_lists_the_sizes() -> None:
    with pytest.raises(UsageError) as e:
        pick_size(machine(GiB), CATALOG, data_disks=0, requested="Standard_Z9")
    msg = str(e.value)
    assert "Standard_Z9" in msg
    for s in CATALOG:
        assert s.name in msg


def test_requested_with_too_many_disks() -> None:
    with pytest.raises(UsageError) as e:
        pick_size(machine(GiB), CATALOG, data_disks=3, requested="Standard_B1s")
    assert "2 data disks, 3 needed" in str(e.value)
    assert "use --vm-size Standard_B2s" in str(e.value)


def test_no_size_fits_names_need_and_closest() -> None:
    with pytest.raises(InvalidState) as e:
        pick_size(machine(GiB, cpus=8), CATALOG, data_disks=9)
    msg = str(e.value)
    assert "8 cores" in msg and "9 data disks" in msg
    closest = msg.split("closest:")[1]
    assert closest.lstrip().startswith("Standard_D4s_v3")  # the nearest miss comes first
    assert closest.count("Standard_") == 3
    with pytest.raises(InvalidState, match="no VM sizes"):
        pick_size(machine(GiB), [], data_disks=0)


# -- check_size --------------------------------------------------------------------------------


def test_check_size_fitting() -> None:
    checks = check_size(machine(GiB, cpus=2), D2SV3, 3)
    assert [c.name for c in checks] == ["size generation", "size data disks", "size cores",
                                        "size memory"]
    assert all(c.ok for c in checks), checks


def test_check_size_failures_name_a_fitting_size() -> None:
    spec = machine(GiB, firmware=Firmware.UEFI, cpus=2, memory_mib=6144)
    checks = by_name(check_size(spec, A1V2, 3, catalog=CATALOG))
    for name in ("size generation", "size data disks", "size cores", "size memory"):
        assert not checks[name].ok
        assert "use --vm-size Standard_D2s_v3" in checks[name].detail
    # without a catalog the fix says what a size needs
    plain = by_name(check_size(spec, A1V2, 3))
    assert "2 cores" in plain["size cores"].detail and "generation 2" in plain["size cores"].detail


def test_check_size_no_fit_in_catalog() -> None:
    checks = by_name(check_size(machine(GiB, cpus=16), D4SV3, 0, catalog=CATALOG))
    assert not checks["size cores"].ok
    assert "no VM size offered fits" in checks["size cores"].detail
    assert checks["size generation"].ok and checks["size memory"].ok


def test_describe() -> None:
    assert describe(B2S) == "Standard_B2s (2 cores, 4 GiB, 4 data disks, V1/V2)"
    assert describe(VmSize("x", 1, 1536, 2, ("V1",))) == "x (1 core, 1.5 GiB (1,536 MiB), 2 data disks, V1)"
