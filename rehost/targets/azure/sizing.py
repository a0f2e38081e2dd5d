"""Azure VM sizes and disk limits: pure logic, no I/O (issue 11, "Azure limits").

``VmSize`` is one size as Azure lists it for a location (``Microsoft.Compute/skus`` joined
with ``vmSizes``); ``rehost.targets.azure.arm`` builds them, the target picks and checks with
the functions here.

The limits, and where Azure documents them:

- Generation: a BIOS machine becomes a generation 1 VM, a UEFI machine a generation 2 VM
  (learn.microsoft.com "Support for generation 2 VMs on Azure": generation 2 uses the UEFI
  boot architecture, generation 1 the BIOS one). A VM's generation cannot be changed after
  it is made, and not every size offers both (the same page's table of series: Av2 is
  generation 1 only).
- OS disk: generation 1 boots from an MBR disk, which addresses 2^32 sectors of 512 bytes,
  2 TiB; only generation 2 takes an OS disk beyond 2 TB (azure.microsoft.com update
  "Azure generation 2 virtual machines (VMs) are now generally available": "Provision OS
  Disk sizes that exceed 2 TB"). Even on generation 2 a managed OS disk is at most
  4,095 GiB, one GiB short of 4 TiB (the ``osDiskSizeGB`` maximum the ARM API references on
  learn.microsoft.com give).
- Data disks: at most 32,767 GiB each, the largest Standard HDD/Standard SSD/Premium SSD
  tier (S80/E80/P80); only Ultra and Premium SSD v2 disks go beyond, which rehost does not
  make. Uploads are capped at 32 TiB + the 512-byte footer (``DiskCreationData.
  uploadSizeBytes``), so 32 TiB itself is no limit to rely on.
- Each disk's virtual size must be a whole MiB: Azure takes a fixed VHD of N MiB + its
  512-byte footer (the ``Add-AzVhd`` reference); rehost pads each disk up to a whole MiB
  (``rehost.targets.azure.vhd.padded_size``), which only adds zeros after the data.
- Disk count: each size has its own ``maxDataDiskCount``; none takes more than 64 data
  disks, plus the OS disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rehost.errors import InvalidState, UsageError
from rehost.spec import Firmware, MachineSpec
from rehost.targets.azure.vhd import MiB, padded_size
from rehost.targets.base import VerifyCheck
from rehost.units import human

GiB = 1 << 30
TiB = 1 << 40
#: a generation 1 VM boots from an MBR disk: 2^32 sectors of 512 bytes
GEN1_OS_DISK_MAX = 2 * TiB
#: a managed OS disk's limit, generation 2 only beyond 2 TiB
GEN2_OS_DISK_MAX = 4095 * GiB
#: the largest managed disk (P80/E80/S80)
DATA_DISK_MAX = 32767 * GiB
#: the most data disks any size takes
MAX_DATA_DISKS = 64
#: what a machine whose memory the source does not know is sized for
DEFAULT_MEMORY_MIB = 512


@dataclass(frozen=True)
class VmSize:
    """One VM size offered in a location."""

    name: str
    cores: int
    memory_mib: int
    max_data_disks: int
    #: Hyper-V generations the size supports, as Azure spells them: "V1", "V2"
    generations: tuple[str, ...] = ("V1", "V2")


def generation(spec: MachineSpec) -> str:
    """The Hyper-V generation the machine needs, as Azure spells it: "V1" boots BIOS
    (generation 1), "V2" boots UEFI (generation 2). Azure cannot change a VM's generation
    after it is made, so it follows the source's firmware."""
    return "V2" if spec.firmware == Firmware.UEFI else "V1"


def _gen_words(gen: str) -> str:
    return f"generation {gen[1:]} ({'UEFI' if gen == 'V2' else 'BIOS'})"


def _size(n: int) -> str:
    """A byte count as exactly as it matters here: whole TiB/GiB/MiB as such, else binary
    units with the exact MiB or byte count beside (a limit's boundary must be readable)."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit:,} {name}"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB:,} MiB" if n < GiB else f"{human(n)} ({n // MiB:,} MiB)"
    return f"{human(n)} ({n:,} bytes)"


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _memory_mib(spec: MachineSpec) -> int:
    return spec.memory_mib if spec.memory_mib > 0 else DEFAULT_MEMORY_MIB


def check_limits(spec: MachineSpec) -> list[VerifyCheck]:
    """Azure's limits for this machine's disks, each a named check; a failure says the fix.

    Sizes are checked as Azure will see them: padded up to a whole MiB. The disk with index 0
    is the OS disk (2 TiB on generation 1, MBR boot; 4,095 GiB on generation 2), every other
    disk a data disk (32,767 GiB). See the module docstring for the sources.
    """
    gen = generation(spec)
    checks: list[VerifyCheck] = []
    if not any(d.index == 0 for d in spec.disks):
        checks.append(VerifyCheck("os disk", False,
                                  f"{spec.name} has no disk 0: Azure boots a VM from its OS disk; "
                                  "rediscover the machine or include its boot disk"))
    for d in sorted(spec.disks, key=lambda d: d.index):
        if d.size <= 0:
            checks.append(VerifyCheck(f"disk {d.index} size", False,
                                      f"disk {d.index} has no size ({d.size} bytes): "
                                      "rediscover the machine"))
            continue
        padded = padded_size(d.size)
        if padded == d.size:
            align = f"{_size(d.size)}, a whole MiB"
        else:
            align = (f"{_size(d.size)} is not a whole MiB: rehost pads it by "
                     f"{_size(padded - d.size)} to {_size(padded)} (Azure needs a VHD whose "
                     "virtual size is a whole MiB; the padding is zeros after the data)")
        checks.append(VerifyCheck(f"disk {d.index} alignment", True, align))
        if d.index == 0:
            limit = GEN1_OS_DISK_MAX if gen == "V1" else GEN2_OS_DISK_MAX
            ok = padded <= limit
            if ok:
                detail = f"OS disk {_size(padded)}, at most {_size(limit)} on {_gen_words(gen)}"
            elif gen == "V1":
                detail = (f"OS disk {_size(padded)} exceeds {_size(limit)}, Azure's limit for a "
                          f"{_gen_words(gen)} VM (MBR boot): shrink the OS disk to at most "
                          f"{_size(limit)}, or convert the guest to UEFI boot (GPT) so it "
                          f"becomes a generation 2 VM (OS disk up to {_size(GEN2_OS_DISK_MAX)})")
            else:
                detail = (f"OS disk {_size(padded)} exceeds {_size(limit)}, Azure's largest OS "
                          f"disk: shrink it to at most {_size(limit)}, moving data to a data "
                          f"disk (up to {_size(DATA_DISK_MAX)} each)")
            checks.append(VerifyCheck("disk 0 size", ok, detail))
        else:
            ok = padded <= DATA_DISK_MAX
            detail = (f"data disk {_size(padded)}, at most {_size(DATA_DISK_MAX)}" if ok else
                      f"data disk {_size(padded)} exceeds {_size(DATA_DISK_MAX)}, Azure's largest "
                      f"managed disk: shrink it, or split its data over disks of at most "
                      f"{_size(DATA_DISK_MAX)}")
            checks.append(VerifyCheck(f"disk {d.index} size", ok, detail))
    n = len(spec.disks)
    data = max(n - 1, 0)
    ok = data <= MAX_DATA_DISKS
    detail = (f"{_count(n, 'disk')}: the OS disk and {_count(data, 'data disk')} "
              f"(Azure sizes take at most {MAX_DATA_DISKS})")
    if not ok:
        detail += f": exclude {data - MAX_DATA_DISKS} data disks from replication"
    checks.append(VerifyCheck("disk count", ok, detail))
    return checks


def describe(size: VmSize) -> str:
    """``Standard_B2s (2 cores, 4 GiB, 4 data disks, V1/V2)``."""
    return (f"{size.name} ({_count(size.cores, 'core')}, {_size(size.memory_mib * MiB)}, "
            f"{_count(size.max_data_disks, 'data disk')}, {'/'.join(size.generations)})")


def _shortfalls(spec: MachineSpec, size: VmSize, data_disks: int, *,
                compute: bool = True) -> list[str]:
    """Why ``size`` does not fit the machine; empty when it does. ``compute`` False leaves
    cores and memory out (an explicitly requested size may be smaller than the source)."""
    gen = generation(spec)
    out = []
    if gen not in size.generations:
        out.append(f"no {_gen_words(gen)} support")
    if size.max_data_disks < data_disks:
        out.append(f"{_count(size.max_data_disks, 'data disk')}, {data_disks} needed")
    if compute and size.cores < spec.cpus:
        out.append(f"{_count(size.cores, 'core')}, {spec.cpus} needed")
    need = _memory_mib(spec)
    if compute and size.memory_mib < need:
        out.append(f"{_size(size.memory_mib * MiB)} memory, {_size(need * MiB)} needed")
    return out


def _key(size: VmSize) -> tuple[int, int, str]:
    return (size.cores, size.memory_mib, size.name)


def _closest(spec: MachineSpec, sizes: Sequence[VmSize], data_disks: int,
             n: int = 3) -> list[VmSize]:
    """The sizes that miss the machine's needs by the least: the right generation first, then
    fewest needs missed, then the smallest relative shortfall, then the smallest size."""
    gen = generation(spec)
    need = _memory_mib(spec)

    def deficit(s: VmSize) -> float:
        def short(has: int, want: int) -> float:
            return max(0, want - has) / want if want > 0 else 0.0
        return (short(s.cores, spec.cpus) + short(s.memory_mib, need)
                + short(s.max_data_disks, data_disks))

    ranked = sorted(sizes, key=lambda s: (gen not in s.generations,
                                          len(_shortfalls(spec, s, data_disks)), deficit(s),
                                          *_key(s)))
    return ranked[:n]


def _need(spec: MachineSpec, data_disks: int) -> str:
    return (f"{_count(spec.cpus, 'core')}, {_size(_memory_mib(spec) * MiB)} memory, "
            f"{_gen_words(generation(spec))}, {_count(data_disks, 'data disk')}")


def pick_size(spec: MachineSpec, sizes: Sequence[VmSize], *, data_disks: int,
              requested: str | None = None) -> VmSize:
    """The VM size to make the machine with.

    ``requested`` (the operator's choice, matched without regard to case as Azure does): that
    size, which must offer the machine's generation and take ``data_disks``; fewer cores or
    less memory than the source had is the operator's call. Otherwise the smallest size (by
    cores, then memory, then name, so the choice is stable) with at least the machine's cores
    and memory (a machine whose memory is unknown counts as needing 512 MiB), its
    generation, and room for ``data_disks``.

    Raises ``UsageError`` for an unknown or unfit requested size, ``InvalidState`` naming the
    need and the closest sizes when none fits.
    """
    if data_disks < 0:
        raise ValueError(f"data_disks must be >= 0, not {data_disks}")
    if requested is not None:
        by_name = {s.name.casefold(): s for s in sizes}
        chosen = by_name.get(requested.casefold())
        if chosen is None:
            names = ", ".join(sorted(s.name for s in sizes)) or "none"
            raise UsageError(f"unknown VM size {requested!r}; sizes offered: {names}")
        short = _shortfalls(spec, chosen, data_disks, compute=False)
        if short:
            fits = [s for s in sizes if not _shortfalls(spec, s, data_disks)]
            hint = f"; use --vm-size {min(fits, key=_key).name}" if fits else ""
            raise UsageError(f"VM size {chosen.name} does not fit {spec.name}: "
                             f"{'; '.join(short)}{hint}")
        return chosen
    fits = [s for s in sizes if not _shortfalls(spec, s, data_disks)]
    if fits:
        return min(fits, key=_key)
    if not sizes:
        raise InvalidState(f"no VM sizes to choose from for {spec.name} (it needs "
                           f"{_need(spec, data_disks)}): check the location offers VM sizes "
                           "to this subscription")
    closest = "; ".join(f"{describe(s)}: {', '.join(_shortfalls(spec, s, data_disks))}"
                        for s in _closest(spec, sizes, data_disks))
    raise InvalidState(f"no VM size offered fits {spec.name}, which needs "
                       f"{_need(spec, data_disks)}; closest: {closest}")


def check_size(spec: MachineSpec, size: VmSize, data_disks: int,
               catalog: Sequence[VmSize] | None = None) -> list[VerifyCheck]:
    """``size`` against the machine, for verify: generation, data disk count, cores, memory.

    A failure's fix names a size that fits (``use --vm-size X``) when ``catalog``, the sizes the
    location offers, is given; otherwise it says what a fitting size needs.
    """
    gen = generation(spec)
    fix_cache: list[str] = []

    def fix() -> str:
        if not fix_cache:
            if catalog is None:
                fix_cache.append(f"choose a size with {_need(spec, data_disks)}")
            else:
                try:
                    fix_cache.append(f"use --vm-size {pick_size(spec, catalog, data_disks=data_disks).name}")
                except InvalidState as e:
                    fix_cache.append(str(e))
        return fix_cache[0]

    checks: list[VerifyCheck] = []
    ok = gen in size.generations
    detail = f"{size.name} offers {_gen_words(gen)}"
    if not ok:
        detail = (f"{size.name} offers only {'/'.join(size.generations) or 'no generation'}, the "
                  f"machine needs {_gen_words(gen)}: {fix()}")
    checks.append(VerifyCheck("size generation", ok, detail))

    ok = data_disks <= size.max_data_disks
    detail = f"{_count(data_disks, 'data disk')}, {size.name} takes {size.max_data_disks}"
    checks.append(VerifyCheck("size data disks", ok, detail if ok else f"{detail}: {fix()}"))

    ok = size.cores >= spec.cpus
    detail = f"{size.name} has {_count(size.cores, 'core')}, the machine {spec.cpus}"
    checks.append(VerifyCheck("size cores", ok, detail if ok else f"{detail}: {fix()}"))

    need = _memory_mib(spec)
    ok = size.memory_mib >= need
    detail = (f"{size.name} has {_size(size.memory_mib * MiB)} memory, the machine "
              f"{_size(need * MiB)}")
    checks.append(VerifyCheck("size memory", ok, detail if ok else f"{detail}: {fix()}"))
    return checks
