"""The demo's Azure: test services that stand in for an Azure subscription, on this host.

There is no Azure from here, so ``rehost demo --target azure`` starts two services and points
an ordinary ``azure`` target at them:

- **Azurite** (Microsoft's storage emulator, a real blob service): the storage account that
  keeps the replica page blobs, and the blobs behind the managed disks;
- **rehost's Resource Manager contract fake** (``rehost.testkit.azure_arm``; NOT Azure):
  HTTPS on loopback, shaped on the REST API specs' examples, with a sign-in endpoint for a
  service principal, disks, networks, NICs and VMs. Its VMs boot the managed disk's bytes
  under QEMU the way Azure boots a Generation 1 VM (i440fx, SeaBIOS, IDE disk), and the serial
  output is the boot diagnostics log the target reads. QEMU has no Hyper-V devices, so the
  boot proves the bytes and the boot chain, not the Hyper-V drivers.

The target code is the one a real subscription gets; only the endpoints differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUBSCRIPTION = "00000000-0000-4000-8000-00000000de70"
RESOURCE_GROUP = "rehost-demo"
LOCATION = "westeurope"
STORAGE_ACCOUNT = "devstoreaccount1"  # Azurite's account: the fake's storage account maps onto it
#: what the demo's guest needs in its initramfs to find its disk on Azure (Gen1: IDE, then
#: the Hyper-V storage and network drivers a guest prepared for Azure carries)
GUEST_MODULES = ("ata_piix", "sd_mod", "hv_vmbus", "hv_storvsc", "hv_netvsc")


@dataclass
class AzureDemo:
    """The running services and the target's options."""

    options: dict[str, Any]
    fake: Any
    azurite: Any

    def leftovers(self, target: Any, vm: str) -> list[str]:
        """Resources still tagged for ``vm`` in the resource group, as the target's own
        Resource Manager client lists them (after a test cleanup: none)."""
        return list(target.arm.tagged(RESOURCE_GROUP, "rehost-vm", vm))

    def replica_blobs(self, machine: str) -> list[str]:
        """Replica blobs (and snapshots) of ``machine`` still in the storage account."""
        from azure.storage.blob import ContainerClient

        from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY

        container = ContainerClient(self.azurite.account_url, str(self.options["container"]),
                                    credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})
        if not container.exists():
            return []
        return [b.name for b in container.list_blobs(name_starts_with=f"rehost-{machine}-",
                                                     include=["snapshots"])]


@contextmanager
def services(workdir: Path, keep: bool = False) -> Iterator[AzureDemo]:
    """Start Azurite and the Resource Manager fake, seed a subscription (resource group,
    failover and test virtual networks, storage account) and sign in as its service
    principal (the secret goes to this process's environment, as an operator would export
    it, never into the vault). ``keep``: leave both running (and the VMs) at the end."""
    from rehost.testkit.azure_arm import ArmFake
    from rehost.testkit.azurite import Azurite

    (workdir / "azurite").mkdir(parents=True, exist_ok=True)
    azurite = Azurite(workdir / "azurite").start()
    fake = None
    try:
        fake = ArmFake(workdir / "azure-fake", azurite).start()
        vnets = {"prod-vnet": {"address_prefix": "10.10.0.0/16", "subnets": {"default": "10.10.1.0/24"}},
                 "test-vnet": {"address_prefix": "10.99.0.0/16", "subnets": {"default": "10.99.1.0/24"}}}
        fake.seed(SUBSCRIPTION, RESOURCE_GROUP, LOCATION, vnets=vnets, storage_account=STORAGE_ACCOUNT)
        os.environ["AZURE_CLIENT_SECRET"] = fake.client_secret
        options = {
            "subscription": SUBSCRIPTION, "resource_group": RESOURCE_GROUP, "location": LOCATION,
            "network": "prod-vnet", "subnet": "default",
            "test_network": "test-vnet", "test_subnet": "default",
            "storage_account": STORAGE_ACCOUNT, "container": "rehost-replicas",
            "tenant_id": fake.tenant_id, "client_id": fake.client_id,
            "resource_manager": fake.url, "authority_host": fake.url, "ca_bundle": str(fake.ca_file),
            "tags": ["environment=rehost-demo"],
        }
        yield AzureDemo(options, fake, azurite)
    finally:
        if not keep:
            if fake is not None:
                fake.stop()
            azurite.stop()
