"""Target ``azure``: machines fail over into an Azure subscription, from replica disks kept in
its storage account.

What it does, step by step (design §11-12):
- **Replicas** (``ReplicaKeeper``): after each committed recovery point the vault calls
  ``sync_replica``: every disk's page blob in the storage account (``rehost-<machine>-diskN.vhd``,
  fixed VHD layout) gets the pages that changed, then a blob snapshot naming the point
  (``pageblob.sync_disk``). Snapshots of points retention dropped are deleted then too.
- **stage_disk** (failover, test failover): the replica's snapshot of the chosen point is
  copied into a blob of its own (``<vm>-diskN.vhd``; Import from a ``?snapshot=`` URL is not
  documented), and a managed disk ``<vm>-diskN`` is imported from it, of the machine's
  generation (BIOS: V1, UEFI: V2); the copy is deleted once the disk exists. Nothing is
  uploaded at failover beyond the last delta the vault synced just before. Without a replica
  (``--direct-upload``, a one-time migration for small fleets) the point is written straight
  into a managed disk opened for upload (create with the upload size, grant write access,
  Put Page, revoke).
- **start**: an NSG and a NIC on the chosen subnet, then the VM (Azure starts VMs when it
  creates them, so the network is chosen here, not at ``create``), with boot diagnostics on;
  its size is ``--vm-size`` or the smallest that fits the machine's CPUs, memory, generation
  and disk count (``sizing.pick_size``).
- **boot_verdict**: the VM's serial log from boot diagnostics.
- **remove** (test cleanup): exactly what was made for that VM: the ids recorded in the
  placement and every resource tagged ``rehost-vm=<vm>`` (a job cut before it recorded an
  id), nothing else.

Credentials: ``azure-identity`` (``arm.credential``): a service principal when
``AZURE_CLIENT_SECRET`` is in the environment, else ``DefaultAzureCredential`` (managed identity,
Azure CLI login, ...). The vault stores no secret: only ids and endpoints. The storage
account's key is fetched through Resource Manager (``listKeys``) when a sync needs it and
never written anywhere.

The SDKs are imported when a call needs them (``arm``, ``blob``): registering the kind, the
CLI's help and every other target pay nothing for them.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rehost.errors import BackendError, InvalidState, NotFound, RehostError, UsageError
from rehost.spec import MachineSpec
from rehost.targets.azure import sizing
from rehost.targets.azure.vhd import FOOTER_SIZE, padded_size
from rehost.targets.base import (
    Capabilities,
    Extent,
    Peer,
    Placement,
    PointDisk,
    Progress,
    ReplicaSync,
    TargetNetwork,
    VerifyCheck,
    VerifyReport,
)
from rehost.targets.registry import TargetPlugin, register

if TYPE_CHECKING:
    from rehost.repository.manifest import RecoveryPoint
    from rehost.repository.repository import Repository
    from rehost.targets.azure.arm import Arm
    from rehost.targets.azure.blob import BlobEndpoint, PageBlob

#: tags on every resource rehost makes: cleanup finds a test's resources by them
TAG_VM, TAG_MACHINE, TAG_POINT = "rehost-vm", "rehost-machine", "rehost-point"
#: on a staged OS disk: the VM size, OS type and source IP ``create`` chose (``find`` reads them)
TAG_SIZE, TAG_OS, TAG_IP = "rehost-size", "rehost-os-type", "rehost-source-ip"
#: the permissions a failover needs (checked by verify against the resource group)
NEEDED_ACTIONS = (
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/networkSecurityGroups/write",
    "Microsoft.Storage/storageAccounts/listKeys/action",
)
BOOT_POLL_S = 3.0


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class AzureSettings:
    """The ``azure`` target's config (``rehost target add azure NAME --subscription ...``)."""

    subscription: str = field(metadata=_help("Subscription id the machines fail over into."))
    resource_group: str = field(metadata=_help("Resource group for the disks, NICs and VMs rehost makes."))
    location: str = field(metadata=_help(
        "Azure region, e.g. westeurope (the storage account must be in it)."))
    network: str = field(metadata=_help("Virtual network machines fail over into."))
    subnet: str = field(metadata=_help("Subnet of --network for failed-over machines."))
    test_network: str = field(metadata=_help(
        "Virtual network for test failovers: isolated, not peered with --network."))
    storage_account: str = field(metadata=_help(
        "Storage account (same region) that keeps the replica disks as page blobs."))
    test_subnet: str = field(default="default", metadata=_help("Subnet of --test-network."))
    container: str = field(default="rehost-replicas", metadata=_help(
        "Blob container for replica disks and staged copies."))
    vm_size: str = field(default="", metadata=_help(
        "VM size for every machine (default: the smallest that fits its CPUs, memory, "
        "generation and disks)."))
    disk_sku: str = field(default="StandardSSD_LRS", metadata=_help(
        "Managed disk SKU: Standard_LRS, StandardSSD_LRS, Premium_LRS, ..."))
    tags: tuple[str, ...] = field(default=(), metadata=_help("KEY=VALUE tags for every resource made."))
    tenant_id: str = field(default="", metadata=_help(
        "Directory (tenant) id of a service principal (or $AZURE_TENANT_ID); its secret is read "
        "from $AZURE_CLIENT_SECRET, never stored."))
    client_id: str = field(default="", metadata=_help(
        "Application (client) id of a service principal (or $AZURE_CLIENT_ID). Without a secret in "
        "the environment: DefaultAzureCredential (managed identity, az login)."))
    resource_manager: str = field(default="https://management.azure.com", metadata=_help(
        "Resource Manager endpoint (another cloud, or the test fake)."))
    authority_host: str = field(default="https://login.microsoftonline.com", metadata=_help(
        "Microsoft Entra authority (another cloud, or the test fake)."))
    blob_endpoint: str = field(default="", metadata=_help(
        "Blob endpoint of the storage account (default: the one Resource Manager reports)."))
    ca_bundle: str = field(default="", metadata=_help(
        "PEM file of CAs to trust for Resource Manager and sign-in (default: the system's)."))
    direct_upload: bool = field(default=False, metadata=_help(
        "Keep no replica: upload the chosen point into new managed disks at failover (small fleets)."))
    sync_workers: int = field(default=4, metadata=_help("Page writes in flight per disk during a sync."))
    keep_private_ip: bool = field(default=False, metadata=_help(
        "Give the failed-over NIC the source's private IP (as its agent reported it) when it lies "
        "in the subnet and is free; else Azure picks one, and the job says why."))

    def __post_init__(self) -> None:
        for name in ("subscription", "resource_group", "location", "network", "subnet", "test_network",
                     "test_subnet", "storage_account", "container"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"--{name.replace('_', '-')} must not be empty")
        if not re.fullmatch(r"[a-z0-9]{3,24}", self.storage_account):
            raise ValueError(f"--storage-account {self.storage_account!r}: Azure names storage accounts "
                             "with 3-24 lower-case letters and digits")
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", self.container):
            raise ValueError(f"--container {self.container!r} is not a valid blob container name")
        if (self.network, self.subnet) == (self.test_network, self.test_subnet):
            raise ValueError("the test network must not be the failover network")
        for t in self.tags:
            if "=" not in t or not t.split("=", 1)[0]:
                raise ValueError(f"--tags takes KEY=VALUE, not {t!r}")
        if not 1 <= self.sync_workers <= 64:
            raise ValueError("--sync-workers must be 1..64")

    @property
    def failover_net(self) -> str:
        return f"{self.network}/{self.subnet}"

    @property
    def test_net(self) -> str:
        return f"{self.test_network}/{self.test_subnet}"


KIND_CAPABILITIES = Capabilities(stages_disks=True, test_network="TEST_NETWORK/TEST_SUBNET",
                                 verdict="boot-diagnostics", keeps_replicas=True)


def _safe(name: str) -> str:
    """A name Azure takes for disks, NICs, NSGs and VMs (letters, digits, -, _, .)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "machine"


class AzureTarget:
    """See the module's docstring."""

    kind = "azure"

    def __init__(self, settings: AzureSettings) -> None:
        self.settings = settings
        self._sizes: list[sizing.VmSize] | None = None

    # -- clients ----------------------------------------------------------------------------

    @cached_property
    def arm(self) -> Arm:
        from rehost.targets.azure import arm

        s = self.settings
        endpoints = arm.ArmEndpoints(s.resource_manager.rstrip("/"), s.authority_host.rstrip("/"),
                                     s.ca_bundle or None)
        return arm.Arm(s.subscription, arm.credential(s.tenant_id or None, s.client_id or None, endpoints),
                       endpoints)

    @cached_property
    def _endpoint(self) -> BlobEndpoint:
        """The storage account's blob endpoint with its key (from Resource Manager)."""
        from rehost.targets.azure.blob import BlobEndpoint

        s = self.settings
        url = s.blob_endpoint
        if not url:
            account = self.arm.storage_account(s.resource_group, s.storage_account)
            if account is None:
                raise NotFound(f"storage account {s.storage_account} not found in resource group "
                               f"{s.resource_group}")
            url = account.blob_endpoint
        key = self.arm.storage_key(s.resource_group, s.storage_account)
        return BlobEndpoint(url.rstrip("/"), s.container,
                            {"account_name": s.storage_account, "account_key": key})

    def _blob(self, name: str) -> PageBlob:
        from rehost.targets.azure.blob import PageBlob

        return PageBlob(self._endpoint, name)

    def _replica(self, machine: str, disk: int) -> PageBlob:
        from rehost.targets.azure.replica import blob_name

        return self._blob(blob_name(machine, disk))

    def _tags(self, vm: str, machine: str = "", **more: str) -> dict[str, str]:
        tags = dict(t.split("=", 1) for t in self.settings.tags)
        tags[TAG_VM] = vm
        if machine:
            tags[TAG_MACHINE] = machine
        return {**tags, **more}

    # -- queries ----------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(stages_disks=True, test_network=self.settings.test_net,
                            verdict="boot-diagnostics", keeps_replicas=not self.settings.direct_upload)

    def networks(self) -> tuple[TargetNetwork, ...]:
        s = self.settings
        return (TargetNetwork(s.failover_net,
                              description=f"subnet {s.subnet} of virtual network {s.network}"),
                TargetNetwork(s.test_net, isolated=True,
                              description=f"test failovers: subnet {s.test_subnet} of {s.test_network}"))

    def verify(self, needed_bytes: int = 0) -> VerifyReport:
        """Every prerequisite as a named check with the fix; reads only, changes nothing."""
        s, checks = self.settings, []
        try:
            rg = self.arm.resource_group(s.resource_group)
        except RehostError as e:
            return VerifyReport([VerifyCheck("sign-in", False, f"{e} (check the credential: AZURE_TENANT_ID, "
                                             "AZURE_CLIENT_ID, AZURE_CLIENT_SECRET or az login)")])
        checks.append(VerifyCheck("sign-in", True, f"signed in to subscription {s.subscription}"))
        checks.append(VerifyCheck("resource group", rg is not None,
                                  f"{s.resource_group} in {rg.location}" if rg else
                                  f"{s.resource_group} not found: az group create -n {s.resource_group} "
                                  f"-l {s.location}"))
        locations = self.arm.locations()
        regions = ", ".join(locations)
        checks.append(VerifyCheck("location", s.location in locations,
                                  s.location if s.location in locations else
                                  f"{s.location} is not a region of this subscription ({regions})"))
        failover = self._check_network(checks, "failover network", s.network, s.subnet)
        test = self._check_network(checks, "test network", s.test_network, s.test_subnet)
        if failover is not None and test is not None:
            peered = test.id in failover.peered_ids or failover.id in test.peered_ids
            same = failover.id == test.id
            how = "is" if same else "is peered with"
            checks.append(VerifyCheck(
                "test network isolated", not (peered or same),
                f"{s.test_network} is not peered with {s.network}" if not (peered or same) else
                f"{s.test_network} {how} {s.network}: a test failover would reach production; "
                "use a virtual network of its own"))
        account = self.arm.storage_account(s.resource_group, s.storage_account)
        if account is None:
            checks.append(VerifyCheck("storage account", False, f"{s.storage_account} not found in "
                                      f"{s.resource_group}: az storage account create -n {s.storage_account} "
                                      f"-g {s.resource_group} -l {s.location} --sku Standard_LRS"))
        else:
            same_region = account.location == s.location
            checks.append(VerifyCheck("storage account", same_region,
                                      f"{s.storage_account} in {account.location}" if same_region else
                                      f"{s.storage_account} is in {account.location}, not {s.location}: "
                                      "managed disks import only from the same region"))
            checks.append(self._check_blobs())
        if s.vm_size:
            catalog = self._catalog()
            chosen = next((z for z in catalog if z.name.casefold() == s.vm_size.casefold()), None)
            offered = ", ".join(z.name for z in catalog[:8])
            # generation and data disks are the machine's: check_machine checks them against
            # each machine before its replication starts
            checks.append(VerifyCheck("vm size", chosen is not None,
                                      f"{sizing.describe(chosen)} is offered in {s.location}; each machine "
                                      "is checked against it before replication" if chosen else
                                      f"{s.vm_size} is not offered in {s.location} ({offered}, ...)"))
        perms = self.arm.permissions(s.resource_group)
        missing = [a for a in NEEDED_ACTIONS if not perms.allows(a)]
        checks.append(VerifyCheck(
            "permissions", not missing,
            "may create disks, NICs, NSGs and VMs and read the storage key" if not missing else
            "the credential may not: " + ", ".join(missing)
            + " (assign it Contributor on the resource group)"))
        return VerifyReport(checks)

    def _check_network(self, checks: list[VerifyCheck], what: str, vnet: str, subnet: str) -> Any:
        net = self.arm.virtual_network(self.settings.resource_group, vnet)
        if net is None:
            checks.append(VerifyCheck(what, False, f"virtual network {vnet} not found in resource group "
                                      f"{self.settings.resource_group}"))
            return None
        names = [sn.name for sn in net.subnets]
        ok = subnet in names and net.location == self.settings.location
        detail = (f"{vnet}/{subnet} in {net.location}" if ok else
                  f"{vnet} has no subnet {subnet} ({', '.join(names) or 'none'})" if subnet not in names else
                  f"{vnet} is in {net.location}, not {self.settings.location}")
        checks.append(VerifyCheck(what, ok, detail))
        return net if ok else None

    def _check_blobs(self) -> VerifyCheck:
        try:
            probe = self._blob(".rehost-verify")
            probe.state()
        except RehostError as e:
            return VerifyCheck("replica storage", False, f"cannot reach the blob service: {e}")
        return VerifyCheck("replica storage", True, f"container {self.settings.container} reachable")

    def _catalog(self) -> list[sizing.VmSize]:
        if self._sizes is None:
            self._sizes = self.arm.vm_sizes(self.settings.location)
        return self._sizes

    def check_machine(self, spec: MachineSpec) -> list[VerifyCheck]:
        """Azure's disk limits (pure), then a VM size that fits (asks Resource Manager; if it
        cannot be asked, the size is checked again at failover)."""
        checks = sizing.check_limits(spec)
        try:
            catalog = self._catalog()
        except RehostError as e:
            return [*checks, VerifyCheck("vm size", True, f"not checked now ({e}); checked at failover")]
        try:
            size = sizing.pick_size(spec, catalog, data_disks=max(0, len(spec.disks) - 1),
                                    requested=self.settings.vm_size or None)
        except RehostError as e:
            return [*checks, VerifyCheck("vm size", False, str(e))]
        return [*checks, VerifyCheck("vm size", True, f"{size.name} ({size.cores} vCPU, "
                                     f"{size.memory_mib} MiB, up to {size.max_data_disks} data disks)")]

    def find(self, vm: str) -> Placement | None:
        s = self.settings
        found = self.arm.vm(s.resource_group, _safe(vm))
        if found is not None:
            disk_ids = [found.os_disk_id, *found.data_disk_ids]
            return self._placement(vm, {"vm_id": found.id, "disk_ids": disk_ids,
                                        "nic_ids": list(found.nic_ids), "size": found.size},
                                   network=found.tags.get("rehost-network"))
        return self._staged(vm)

    def _staged(self, vm: str) -> Placement | None:
        """The machine as its staged disks describe it (no VM yet): disk 0's tags carry what
        ``create`` chose from the spec, so a job resumed after a kill finds the same."""
        s = self.settings
        disks: list[Any] = []
        while (d := self.arm.disk(s.resource_group, self._disk_name(vm, len(disks)))) is not None:
            disks.append(d)
        if not disks:
            return None
        t = disks[0].tags
        details: dict[str, Any] = {"disk_ids": [d.id for d in disks], "size": t.get(TAG_SIZE),
                                   "generation": disks[0].generation or "V1",
                                   "os_type": t.get(TAG_OS, "Linux"), "machine": t.get(TAG_MACHINE, ""),
                                   "source_ip": t.get(TAG_IP) or None}
        return self._placement(vm, details)

    def is_running(self, placement: Placement) -> bool:
        found = self.arm.vm(self.settings.resource_group, _safe(placement.vm))
        return found is not None and found.power_state == "running"

    def _placement(self, vm: str, details: dict[str, Any], network: str | None = None) -> Placement:
        s = self.settings
        rid = (f"/subscriptions/{s.subscription}/resourceGroups/{s.resource_group}/providers/"
               f"Microsoft.Compute/virtualMachines/{_safe(vm)}")
        return Placement(_safe(vm), rid, network, "boot diagnostics serial log", details)

    # -- replicas -------------------------------------------------------------------------------

    def sync_replica(self, machine: str, point: RecoveryPoint, repo: Repository, *,
                     keep: Collection[str], journal_dir: Path,
                     progress: Progress | None = None) -> ReplicaSync:
        from rehost.targets.azure.pageblob import forget_snapshots
        from rehost.targets.azure.replica import sync_point

        t0 = time.monotonic()
        reports = sync_point(repo, point, lambda i: self._replica(machine, i), journal_dir=journal_dir,
                             workers=self.settings.sync_workers, progress=progress)
        forgotten = 0
        for d in point.disks:
            forgotten += len(forget_snapshots(self._replica(machine, d.index), {*keep, point.id}))
        notes = [f"disk {d.index}: {r.note}" for d, r in zip(point.disks, reports, strict=True) if r.note]
        return ReplicaSync(point.id, sum(r.bytes_written for r in reports),
                           sum(r.requests for r in reports), sum(r.retries for r in reports),
                           time.monotonic() - t0, forgotten, "; ".join(notes))

    def has_replica_point(self, machine: str, point: RecoveryPoint) -> bool:
        from rehost.targets.azure.pageblob import point_snapshots

        return all(point.id in point_snapshots(self._replica(machine, d.index)) for d in point.disks)

    def drop_replicas(self, machine: str, disks: Sequence[int]) -> str:
        for index in disks:
            self._replica(machine, index).delete()
        return (f"{len(disks)} replica blob(s) and their snapshots deleted from storage account "
                f"{self.settings.storage_account}")

    # -- operations -----------------------------------------------------------------------------

    @staticmethod
    def _disk_name(vm: str, index: int) -> str:
        return f"{_safe(vm)}-disk{index}"

    def stage_disk(self, vm: str, disk: PointDisk, data: Iterable[Extent], progress: Progress | None = None,
                   *, spec: MachineSpec | None = None) -> None:
        """A managed disk ``<vm>-diskN`` holding ``disk.point``: imported from a copy of the
        replica's snapshot (nothing read from ``data``), or, with no replica, uploaded."""
        s, name = self.settings, self._disk_name(vm, disk.index)
        existing = self.arm.disk(s.resource_group, name)
        if existing is not None:
            if existing.tags.get(TAG_POINT) == disk.point and existing.state in ("Unattached", "Attached"):
                return
            if existing.state == "Attached":
                raise InvalidState(f"managed disk {name} is attached to a VM and holds another point; "
                                   f"remove {vm} first (rehost failover --cleanup)")
            if existing.state == "ActiveUpload":
                self.arm.revoke_disk_access(s.resource_group, name)
            self.arm.delete_disk(s.resource_group, name)  # half-made or from another point
        generation = sizing.generation(spec) if spec is not None and disk.index == 0 else "V1"
        os_type = _os_type(spec) if disk.index == 0 else None
        tags = self._tags(vm, disk.machine, **{TAG_POINT: disk.point})
        if spec is not None and disk.index == 0:  # what create() needs, kept where find() sees it
            tags.update(self._machine_tags(spec))
        if self.settings.direct_upload or not disk.machine:
            self._upload(name, disk, data, progress, generation, os_type, tags)
            return
        self._import(vm, name, disk, data, progress, generation, os_type, tags)

    def _upload(self, name: str, disk: PointDisk, data: Iterable[Extent], progress: Progress | None,
                generation: str, os_type: str | None, tags: dict[str, str]) -> None:
        from rehost.targets.azure.blob import PageBlob
        from rehost.targets.azure.upload import upload_disk

        s = self.settings
        self.arm.create_disk_upload(s.resource_group, name, s.location, padded_size(disk.size) + FOOTER_SIZE,
                                    generation=generation, os_type=os_type, sku=s.disk_sku, tags=tags)
        sas = self.arm.grant_disk_access(s.resource_group, name, write=True)
        try:
            upload_disk(PageBlob.from_url(sas), disk.size, data, workers=s.sync_workers, progress=progress)
        except BaseException:
            # a half-written disk must not pass for the point (a kill -9 leaves it
            # ActiveUpload instead, which the next try deletes)
            self.arm.revoke_disk_access(s.resource_group, name)
            self.arm.delete_disk(s.resource_group, name)
            raise
        self.arm.revoke_disk_access(s.resource_group, name)

    def _import(self, vm: str, name: str, disk: PointDisk, data: Iterable[Extent], progress: Progress | None,
                generation: str, os_type: str | None, tags: dict[str, str]) -> None:
        from rehost.targets.azure.pageblob import point_snapshots
        from rehost.targets.azure.upload import upload_disk

        s = self.settings
        replica = self._replica(disk.machine, disk.index)
        staged = self._blob(f"staged-{name}.vhd")
        snap = point_snapshots(replica).get(disk.point)
        if snap is not None:
            staged.copy_from(replica.source_url(snap))  # inside the account: no bytes from here
        else:  # no replica of that point: upload it (the vault syncs before staging, so rare)
            staged.delete()
            staged.create(padded_size(disk.size) + FOOTER_SIZE, {TAG_POINT: disk.point})
            upload_disk(staged, disk.size, data, workers=s.sync_workers, progress=progress)
        account = self.arm.storage_account(s.resource_group, s.storage_account)
        if account is None:
            raise NotFound(f"storage account {s.storage_account} not found in {s.resource_group}")
        # the account's own endpoint, not --blob-endpoint (a private endpoint or proxy this host
        # reaches the account through): Azure imports from the account's canonical URL
        source = f"{account.blob_endpoint.rstrip('/')}/{s.container}/{staged.name}"
        self.arm.create_disk_import(s.resource_group, name, s.location, source, account.id,
                                    generation=generation, os_type=os_type, sku=s.disk_sku, tags=tags)
        staged.delete()
        if progress:
            progress(disk.size, disk.size)

    def _machine_tags(self, spec: MachineSpec) -> dict[str, str]:
        size = sizing.pick_size(spec, self._catalog(), data_disks=max(0, len(spec.disks) - 1),
                                requested=self.settings.vm_size or None)
        wanted = next((a.split("/")[0] for n in spec.nics[:1] for a in n.addresses if "." in a), "")
        return {TAG_SIZE: size.name, TAG_OS: _os_type(spec), TAG_MACHINE: spec.name, TAG_IP: wanted}

    def create(self, spec: MachineSpec, vm: str, disks: Sequence[PointDisk]) -> Placement:
        """Check the staged disks and choose the size; the VM itself is made by ``start``,
        because Azure starts a VM when it creates it and its NIC needs the network."""
        s = self.settings
        ids = []
        for d in sorted(disks, key=lambda d: d.index):
            made = self.arm.disk(s.resource_group, self._disk_name(vm, d.index))
            ready = made is not None and made.state in ("Unattached", "Attached")
            if made is None or not ready or made.tags.get(TAG_POINT) != d.point:
                raise InvalidState(f"disk {d.index} of {vm} is not staged from point {d.point[:12]}")
            ids.append(made.id)
        staged = self._staged(vm)
        assert staged is not None
        if staged.details.get("size") is None:  # staged without the machine's spec
            t = self._machine_tags(spec)
            staged = self._placement(vm, {**staged.details, "size": t[TAG_SIZE], "os_type": t[TAG_OS],
                                          "machine": t[TAG_MACHINE], "source_ip": t[TAG_IP] or None})
        return staged

    def endpoint(self, placement: Placement, port: int) -> tuple[str, int] | None:
        """The NIC's private address: reachable from a host in the virtual network (or one
        peered with it) only; from elsewhere the checks fail with the connection error."""
        ip = placement.details.get("private_ip")
        return None if not ip else (str(ip), port)

    def start(self, placement: Placement, network: str, *, ports: Sequence[int] = (),
              peers: Sequence[Peer] = ()) -> Placement:
        s, vm = self.settings, placement.vm
        found = self.arm.vm(s.resource_group, vm)
        if found is not None:
            if found.power_state != "running":
                self.arm.start_vm(s.resource_group, vm)
            return self._placement(vm, {**placement.details, "vm_id": found.id}, network)
        vnet, _, subnet = network.partition("/")
        if network not in (s.failover_net, s.test_net):
            raise UsageError(f"target {self.kind} has no network {network!r} "
                             f"({s.failover_net}, {s.test_net})")
        net = self.arm.virtual_network(s.resource_group, vnet)
        sub = next((x for x in (net.subnets if net else []) if x.name == subnet), None)
        if sub is None:
            raise NotFound(f"subnet {network} not found in resource group {s.resource_group}")
        details = dict(placement.details)
        tags = self._tags(vm, str(details.get("machine", "")), **{"rehost-network": network})
        nsg_id = self.arm.create_nsg(s.resource_group, f"{vm}-nsg", s.location, tags)
        nic, ip_note = self._nic(vm, sub, nsg_id, details.get("source_ip"), tags)
        if ip_note:
            details["ip_note"] = ip_note
        disk_ids = list(details["disk_ids"])
        made = self.arm.create_vm(s.resource_group, vm, s.location, str(details["size"]), disk_ids[0],
                                  disk_ids[1:], nic.id, os_type=str(details.get("os_type", "Linux")),
                                  tags=tags)
        details.update(vm_id=made.id, nic_ids=[nic.id], nsg_id=nsg_id, private_ip=nic.private_ip)
        return self._placement(vm, details, network)

    def _nic(self, vm: str, subnet: Any, nsg_id: str, source_ip: str | None,
             tags: dict[str, str]) -> tuple[Any, str]:
        """The NIC, with the source's private IP when asked for, in the subnet and free."""
        s = self.settings
        make = partial(self.arm.create_nic, s.resource_group, f"{vm}-nic", s.location, subnet.id, nsg_id)
        existing = self.arm.nic(s.resource_group, f"{vm}-nic")
        if existing is not None or not (s.keep_private_ip and source_ip):
            return existing or make(None, tags), ""
        if ipaddress.ip_address(source_ip) not in ipaddress.ip_network(subnet.address_prefix, strict=False):
            return make(None, tags), (f"source IP {source_ip} is not in subnet {subnet.name} "
                                      f"({subnet.address_prefix}): Azure chose one")
        try:
            return make(source_ip, tags), ""
        except BackendError as e:
            if "PrivateIPAddressInUse" not in str(e) and "InUse" not in str(e):
                raise
            return make(None, tags), f"source IP {source_ip} is in use in {subnet.name}: Azure chose one"

    def boot_verdict(self, placement: Placement, pattern: str, timeout: float) -> str:
        """The first match of ``pattern`` in the VM's serial log (boot diagnostics)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        log = ""
        while True:
            try:
                log = self.arm.serial_log(self.settings.resource_group, placement.vm)
            except BackendError as e:
                if not e.retryable:
                    raise
            m = rx.search(log)
            if m:
                return m.group(0).strip()
            if time.monotonic() >= deadline:
                tail = "\n".join(log.strip().splitlines()[-5:]) or "(nothing yet)"
                raise InvalidState(f"{placement.vm} showed no {pattern!r} in its boot diagnostics serial log "
                                   f"within {timeout:.0f}s; last lines:\n{tail}")
            time.sleep(BOOT_POLL_S)

    def hydrate(self, placement: Placement, progress: Progress | None = None) -> None:
        """Managed disks hold every byte from the start: nothing to copy."""

    def stop(self, placement: Placement, graceful_timeout: float = 30.0) -> None:
        if self.arm.vm(self.settings.resource_group, placement.vm) is not None:
            self.arm.power_off_vm(self.settings.resource_group, placement.vm)

    def remove(self, placement: Placement) -> None:
        """Delete what was made for this VM: recorded ids and the ``rehost-vm`` tag; the
        replica blobs (which belong to the machine, not the VM) stay."""
        s, vm = self.settings, placement.vm
        self.arm.delete_vm(s.resource_group, vm)
        self.arm.delete_nic(s.resource_group, f"{vm}-nic")
        self.arm.delete_nsg(s.resource_group, f"{vm}-nsg")
        for index in range(len(placement.details.get("disk_ids", [])) or 1):
            self.arm.delete_disk(s.resource_group, self._disk_name(vm, index))
        for rid in self.arm.tagged(s.resource_group, TAG_VM, vm):  # what a cut job left unrecorded
            kind = rid.split("/providers/", 1)[-1].lower()
            rname = rid.rsplit("/", 1)[-1]
            if kind.startswith("microsoft.compute/virtualmachines/"):
                self.arm.delete_vm(s.resource_group, rname)
            elif kind.startswith("microsoft.network/networkinterfaces/"):
                self.arm.delete_nic(s.resource_group, rname)
            elif kind.startswith("microsoft.network/networksecuritygroups/"):
                self.arm.delete_nsg(s.resource_group, rname)
            elif kind.startswith("microsoft.compute/disks/"):
                self.arm.delete_disk(s.resource_group, rname)
        for index in range(16):
            staged = self._blob(f"staged-{self._disk_name(vm, index)}.vhd")
            if staged.state() is None:
                break
            staged.delete()


def _os_type(spec: MachineSpec | None) -> str:
    return "Windows" if spec is not None and "win" in (spec.guest_os or "").lower() else "Linux"


def _open(settings: AzureSettings) -> AzureTarget:
    return AzureTarget(settings)


PLUGIN = register(TargetPlugin(
    kind="azure",
    summary="Azure: replica disks as page blobs in a storage account, managed disks, NICs and VMs",
    config=AzureSettings,
    capabilities=KIND_CAPABILITIES,
    open=_open,
))
