"""Azure VM sizes and disk limits: pure logic, no I/O (issue 11, "Azure limits").

``VmSize`` is one size as Azure lists it for a location (``Microsoft.Compute/skus`` joined
with ``vmSizes``); ``rehost.targets.azure.arm`` builds them, the target picks and checks with
the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmSize:
    """One VM size offered in a location."""

    name: str
    cores: int
    memory_mib: int
    max_data_disks: int
    #: Hyper-V generations the size supports, as Azure spells them: "V1", "V2"
    generations: tuple[str, ...] = ("V1", "V2")
