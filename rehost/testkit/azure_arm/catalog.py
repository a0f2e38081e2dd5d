"""The VM sizes the fake offers in every location (test fake, not Azure).

Numbers as Azure lists them for these sizes (``az vm list-sizes``, ``az vm list-skus``; the
Av2 series is generation 1 only, learn.microsoft.com "Support for generation 2 VMs on Azure").
Shapes: ``VirtualMachineSizes_ListByLocation`` (``vmSizes``: name, numberOfCores,
osDiskSizeInMB, resourceDiskSizeInMB, memoryInMB, maxDataDiskCount) and
``ResourceSkus_List`` (``Microsoft.Compute/skus``: resourceType, name, tier, size, family,
locations, capabilities as name/value strings, restrictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Size:
    name: str
    family: str
    cores: int
    memory_mb: int
    max_data_disks: int
    resource_disk_mb: int
    generations: str = "V1,V2"

    def vm_size(self) -> dict[str, Any]:
        return {"name": self.name, "numberOfCores": self.cores, "osDiskSizeInMB": 1047552,
                "resourceDiskSizeInMB": self.resource_disk_mb, "memoryInMB": self.memory_mb,
                "maxDataDiskCount": self.max_data_disks}

    def sku(self, location: str) -> dict[str, Any]:
        caps = {"MaxResourceVolumeMB": self.resource_disk_mb, "OSVhdSizeMB": 1047552,
                "vCPUs": self.cores, "HyperVGenerations": self.generations,
                "MemoryGB": f"{self.memory_mb / 1024:g}", "MaxDataDiskCount": self.max_data_disks,
                "LowPriorityCapable": "True", "PremiumIO": "True" if "s" in self.name.split("_")[1].lower()
                else "False", "vCPUsAvailable": self.cores, "ACUs": 100,
                "RdmaEnabled": "False", "MaxNetworkInterfaces": 2}
        return {"resourceType": "virtualMachines", "name": self.name, "tier": "Standard",
                "size": self.name.split("_", 1)[1], "family": self.family, "locations": [location],
                "locationInfo": [{"location": location, "zones": [], "zoneDetails": []}],
                "capabilities": [{"name": k, "value": str(v)} for k, v in caps.items()],
                "restrictions": []}


SIZES = (
    Size("Standard_B1s", "standardBSFamily", 1, 1024, 2, 4096),
    Size("Standard_B1ms", "standardBSFamily", 1, 2048, 2, 4096),
    Size("Standard_B2s", "standardBSFamily", 2, 4096, 4, 8192),
    Size("Standard_DS1_v2", "standardDSv2Family", 1, 3584, 4, 7168),
    Size("Standard_D2s_v3", "standardDSv3Family", 2, 8192, 4, 16384),
    Size("Standard_D4s_v3", "standardDSv3Family", 4, 16384, 8, 32768),
    Size("Standard_A1_v2", "standardAv2Family", 1, 2048, 2, 10240, "V1"),
    Size("Standard_A2_v2", "standardAv2Family", 2, 4096, 4, 20480, "V1"),
)


def size(name: str) -> Size | None:
    return next((s for s in SIZES if s.name.lower() == name.lower()), None)
