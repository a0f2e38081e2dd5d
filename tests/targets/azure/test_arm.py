"""``rehost.targets.azure.arm`` (the real Azure SDKs) against rehost's Resource Manager
contract fake (``rehost.testkit.azure_arm``; a test fake, not Azure) on the session's Azurite.

Every getter present and missing, permissions, managed disks (Import from a fixed-VHD blob,
refused from a snapshot URL or a bad footer; the Upload flow with its write SAS; attach
refused while the upload is open), NSGs and NICs with Azure's private IP rules, VMs, retries
of injected 429/500, a 409 that surfaces, sign-in with a wrong secret, and no secret in any
DEBUG log or error. One slow test boots a tiny Linux from an imported managed disk.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from rehost.errors import BackendError
from rehost.targets.azure.arm import Arm, credential
from rehost.targets.azure.blob import BlobEndpoint, PageBlob
from rehost.targets.azure.upload import upload_disk
from rehost.targets.azure.vhd import FOOTER_SIZE, make_footer, padded_size
from rehost.testkit.azure_arm import ArmFake
from rehost.testkit.azure_arm.vm import qemu_pids
from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

MiB = 1 << 20
SUB = "22222222-3333-4444-8555-666666666666"
LOCATION = "westeurope"
VNETS = {"prod": {"address_prefix": "10.1.0.0/16",
                  "subnets": {"default": "10.1.0.0/24", "small": "10.1.9.0/29"}, "peerings": ["hub"]},
         "hub": {"address_prefix": "10.0.0.0/16", "subnets": {"default": "10.0.0.0/24"}},
         "test": {"address_prefix": "10.2.0.0/16", "subnets": {"default": "10.2.0.0/24"}}}
ACCOUNT_ID = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/" + ACCOUNT


@dataclass
class Env:
    fake: ArmFake
    arm: Arm
    rg: str
    azurite: Azurite

    def blobs(self, container: str = "") -> BlobEndpoint:
        return BlobEndpoint(self.azurite.account_url, container or "src-" + self.rg,
                            {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})

    def subnet_id(self, vnet: str = "prod", subnet: str = "default") -> str:
        return (f"/subscriptions/{SUB}/resourceGroups/{self.rg}/providers/Microsoft.Network/virtualNetworks/"
                f"{vnet}/subnets/{subnet}")


def seed(fake: ArmFake, **kw: object) -> str:
    rg = "rg-" + secrets.token_hex(4)
    fake.seed(SUB, rg, LOCATION, vnets=VNETS, storage_account=ACCOUNT, **kw)  # type: ignore[arg-type]
    return rg


def make_arm(fake: ArmFake, **kw: object) -> Arm:
    endpoints = fake.endpoints()
    return Arm(SUB, credential(fake.tenant_id, fake.client_id, endpoints), endpoints, backoff=0.01,
               **kw)  # type: ignore[arg-type]


@pytest.fixture
def env(arm_fake: ArmFake, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", arm_fake.client_secret)
    return Env(arm_fake, make_arm(arm_fake), seed(arm_fake), azurite)


def vhd_blob(env: Env, name: str, data: bytes, *, footer: bytes | None = None) -> PageBlob:
    """A page blob holding ``data`` as a fixed VHD (padded to a whole MiB, then the footer)."""
    size = len(data)
    blob = PageBlob(env.blobs(), name)
    blob.create(padded_size(size) + FOOTER_SIZE, {})
    for off in range(0, size, 4 * MiB):
        chunk = data[off:off + 4 * MiB]
        blob.put(off, chunk.ljust(-(-len(chunk) // 512) * 512, b"\0"))
    blob.put(padded_size(size), make_footer(size) if footer is None else footer)
    return blob


def account_id(env: Env) -> str:
    return ACCOUNT_ID.format(sub=SUB, rg=env.rg)


# -- getters ----------------------------------------------------------------------------------------

def test_getters_present_and_missing(env: Env) -> None:
    arm, rg = env.arm, env.rg
    group = arm.resource_group(rg)
    assert group is not None and group.location == LOCATION and group.id.endswith(f"/resourceGroups/{rg}")
    assert arm.resource_group("rg-nope") is None
    assert LOCATION in arm.locations()

    prod = arm.virtual_network(rg, "prod")
    assert prod is not None and prod.location == LOCATION and prod.address_prefixes == ["10.1.0.0/16"]
    assert {s.name: s.address_prefix for s in prod.subnets} == VNETS["prod"]["subnets"]
    hub = arm.virtual_network(rg, "hub")
    assert hub is not None and prod.peered_ids == [hub.id] and hub.peered_ids == [prod.id]  # both sides
    test = arm.virtual_network(rg, "test")
    assert test is not None and test.peered_ids == []
    assert arm.virtual_network(rg, "nope") is None
    assert arm.virtual_network("rg-nope", "prod") is None

    account = arm.storage_account(rg, ACCOUNT)
    assert account is not None and account.id == account_id(env) and account.location == LOCATION
    assert account.blob_endpoint == env.azurite.account_url + "/"
    assert arm.storage_key(rg, ACCOUNT) == ACCOUNT_KEY
    assert arm.storage_account(rg, "nosuchaccount") is None
    with pytest.raises(BackendError, match="ResourceNotFound"):
        arm.storage_key(rg, "nosuchaccount")

    sizes = {s.name: s for s in arm.vm_sizes(LOCATION)}
    b1s, a1 = sizes["Standard_B1s"], sizes["Standard_A1_v2"]
    assert (b1s.cores, b1s.memory_mib, b1s.max_data_disks, b1s.generations) == (1, 1024, 2, ("V1", "V2"))
    assert a1.generations == ("V1",) and sizes["Standard_D4s_v3"].max_data_disks == 8

    for getter in (arm.disk, arm.nic, arm.vm):
        assert getter(rg, "nope") is None
    assert arm.tagged(rg, "rehost-vm", "nope") == []


def test_permissions_full_and_read_only(env: Env) -> None:
    full = env.arm.permissions(env.rg)
    assert full.allows("Microsoft.Compute/disks/write")
    assert full.allows("Microsoft.Storage/storageAccounts/listKeys/action")
    ro = env.arm.permissions(seed(env.fake, read_only=True))
    assert ro.allows("Microsoft.Compute/disks/read") and ro.allows("microsoft.network/virtualNetworks/READ")
    assert not ro.allows("Microsoft.Compute/disks/write")
    assert not ro.allows("Microsoft.Storage/storageAccounts/listKeys/action")


def test_token_is_cached_and_carried(env: Env) -> None:
    before = len(env.fake.requests())
    for _ in range(3):
        env.arm.resource_group(env.rg)
        env.arm.virtual_network(env.rg, "prod")
    log = env.fake.requests()[before:]
    assert [q["path"] for q in log if q["path"].endswith("/oauth2/v2.0/token")] == [
        f"/{env.fake.tenant_id}/oauth2/v2.0/token"]  # one sign-in, then the cached token
    assert all(q["status"] == 200 for q in log) and len(log) == 7


# -- disks ------------------------------------------------------------------------------------------

def test_disk_import_from_a_fixed_vhd_blob(env: Env) -> None:
    arm, rg = env.arm, env.rg
    data = os.urandom(3 * MiB + 4096)  # padded to 4 MiB
    src = vhd_blob(env, "web.vhd", data)
    made = arm.create_disk_import(rg, "web-disk0", LOCATION, src.url, account_id(env), generation="V2",
                                  os_type="Linux", sku="StandardSSD_LRS", tags={"rehost-vm": "web"})
    assert made.state == "Unattached" and made.size_bytes == 4 * MiB and made.generation == "V2"
    got = arm.disk(rg, "web-disk0")
    assert got is not None and got.tags == {"rehost-vm": "web"} and got.provisioning_state == "Succeeded"
    src.delete()  # the managed disk holds its own copy
    sas = arm.grant_disk_access(rg, "web-disk0", write=False)
    assert arm.disk(rg, "web-disk0").state == "ActiveSAS"  # type: ignore[union-attr]
    copy = PageBlob.from_url(sas)
    assert copy.read(0, len(data)) == data
    assert copy.read(4 * MiB, FOOTER_SIZE)[:8] == b"conectix"
    arm.revoke_disk_access(rg, "web-disk0")
    assert arm.disk(rg, "web-disk0").state == "Unattached"  # type: ignore[union-attr]
    with pytest.raises(BackendError):
        PageBlob.from_url(sas, retries=0).read(0, 512)  # the SAS was revoked
    assert arm.tagged(rg, "rehost-vm", "web") == [got.id]
    arm.delete_disk(rg, "web-disk0")
    arm.delete_disk(rg, "web-disk0")  # again: nothing to delete is fine
    assert arm.disk(rg, "web-disk0") is None


def test_disk_import_refused_from_a_snapshot_url_or_a_bad_vhd(env: Env) -> None:
    arm, rg = env.arm, env.rg
    src = vhd_blob(env, "snap.vhd", os.urandom(MiB))
    snap = src.snapshot({})
    with pytest.raises(BackendError, match=r"InvalidParameter: .*snapshot") as err:
        arm.create_disk_import(rg, "d1", LOCATION, f"{src.url}?snapshot={quote(snap)}", account_id(env),
                               generation="V1", os_type=None, sku="Standard_LRS", tags={})
    assert "create managed disk (Import)" in str(err.value) and f"{rg}/d1" in str(err.value)
    assert arm.disk(rg, "d1") is None
    bad = vhd_blob(env, "bad.vhd", os.urandom(MiB), footer=bytes(FOOTER_SIZE))
    with pytest.raises(BackendError, match=r"InvalidVhd: .*not a VHD footer"):
        arm.create_disk_import(rg, "d2", LOCATION, bad.url, account_id(env), generation="V1", os_type=None,
                               sku="Standard_LRS", tags={})
    failed = arm.disk(rg, "d2")
    assert failed is not None and failed.state == "Failed"
    arm.delete_disk(rg, "d2")
    with pytest.raises(BackendError, match="InvalidParameter"):  # a blob of another account
        arm.create_disk_import(rg, "d3", LOCATION, "https://elsewhere.blob.core.windows.net/c/x.vhd",
                               account_id(env), generation="V1", os_type=None, sku="Standard_LRS", tags={})


def test_upload_flow_and_attach_refused_while_open(env: Env) -> None:
    arm, rg = env.arm, env.rg
    size = 20 * MiB
    made = arm.create_disk_upload(rg, "up-disk0", LOCATION, padded_size(size) + FOOTER_SIZE, generation="V1",
                                  os_type="Linux", sku="Standard_LRS", tags={"rehost-vm": "up"})
    assert made.state == "ReadyToUpload" and made.size_bytes == size
    sas = arm.grant_disk_access(rg, "up-disk0", write=True)
    assert arm.disk(rg, "up-disk0").state == "ActiveUpload"  # type: ignore[union-attr]
    data = os.urandom(2 * MiB)
    extents = [(0, len(data), data), (len(data), size - len(data), None)]
    report = upload_disk(PageBlob.from_url(sas), size, extents)
    assert report.bytes_written == len(data) + FOOTER_SIZE

    nsg = arm.create_nsg(rg, "up-nsg", LOCATION, {"rehost-vm": "up"})
    nic = arm.create_nic(rg, "up-nic", LOCATION, env.subnet_id(), nsg, None, {"rehost-vm": "up"})
    with pytest.raises(BackendError, match=r"create VM .*OperationNotAllowed: .*ActiveUpload"):
        arm.create_vm(rg, "up", LOCATION, "Standard_B1s", made.id, [], nic.id, os_type="Linux", tags={})
    assert arm.vm(rg, "up") is None
    with pytest.raises(BackendError, match="OperationNotAllowed"):
        arm.grant_disk_access(rg, "up-disk0", write=False)  # no read access while uploading

    arm.revoke_disk_access(rg, "up-disk0")
    assert arm.disk(rg, "up-disk0").state == "Unattached"  # type: ignore[union-attr]
    with pytest.raises(BackendError):
        PageBlob.from_url(sas, retries=0).put(0, bytes(512))  # the write SAS is revoked
    with pytest.raises(BackendError, match="OperationNotAllowed"):
        arm.grant_disk_access(rg, "up-disk0", write=True)  # uploaded: no more writes
    read = PageBlob.from_url(arm.grant_disk_access(rg, "up-disk0", write=False))
    assert read.read(0, len(data)) == data and read.read(size, 8) == b"conectix"
    arm.revoke_disk_access(rg, "up-disk0")
    for name in ("up-nic", "up-nsg"):
        (arm.delete_nic if name.endswith("nic") else arm.delete_nsg)(rg, name)
    arm.delete_disk(rg, "up-disk0")
    assert arm.tagged(rg, "rehost-vm", "up") == []


# -- network ----------------------------------------------------------------------------------------

def test_nsg_and_nics_with_azure_private_ip_rules(env: Env) -> None:
    arm, rg = env.arm, env.rg
    nsg = arm.create_nsg(rg, "n-nsg", LOCATION, {"k": "v"})
    assert nsg.endswith("/networkSecurityGroups/n-nsg")
    assert arm.create_nsg(rg, "n-nsg", LOCATION, {"k": "v"}) == nsg  # idempotent
    first = arm.create_nic(rg, "n1", LOCATION, env.subnet_id(), nsg, None, {"k": "v"})
    assert first.private_ip == "10.1.0.4"  # Azure keeps .0-.3 for itself
    second = arm.create_nic(rg, "n2", LOCATION, env.subnet_id(), nsg, "10.1.0.20", {})
    assert second.private_ip == "10.1.0.20"
    assert arm.create_nic(rg, "n1", LOCATION, env.subnet_id(), nsg, None, {"k": "v"}).private_ip == "10.1.0.4"
    with pytest.raises(BackendError, match=r"create network interface .*/n3: PrivateIPAddressInUse"):
        arm.create_nic(rg, "n3", LOCATION, env.subnet_id(), nsg, "10.1.0.20", {})
    with pytest.raises(BackendError, match="PrivateIPAddressNotInSubnet"):
        arm.create_nic(rg, "n3", LOCATION, env.subnet_id(), nsg, "10.1.1.5", {})
    with pytest.raises(BackendError, match="PrivateIPAddressNotInSubnet"):
        arm.create_nic(rg, "n3", LOCATION, env.subnet_id(), nsg, "10.1.0.2", {})  # reserved by Azure
    with pytest.raises(BackendError, match="InvalidResourceReference"):
        arm.create_nic(rg, "n3", LOCATION, env.subnet_id(subnet="nope"), nsg, None, {})
    small = [arm.create_nic(rg, f"s{i}", LOCATION, env.subnet_id(subnet="small"), None, None, {}).private_ip
             for i in range(3)]  # a /29: .4, .5, .6 usable (.7 is the broadcast address)
    assert small == ["10.1.9.4", "10.1.9.5", "10.1.9.6"]
    with pytest.raises(BackendError, match="SubnetIsFull"):
        arm.create_nic(rg, "s3", LOCATION, env.subnet_id(subnet="small"), None, None, {})
    got = arm.nic(rg, "n2")
    assert got is not None and got.private_ip == "10.1.0.20" and got.vm_id == ""
    with pytest.raises(BackendError, match=r"delete network security group .*InUseNetworkSecurityGroup"):
        arm.delete_nsg(rg, "n-nsg")
    assert sorted(arm.tagged(rg, "k", "v")) == sorted([first.id, nsg])
    for name in ("n1", "n2", "s0", "s1", "s2"):
        arm.delete_nic(rg, name)
        arm.delete_nic(rg, name)
    arm.delete_nsg(rg, "n-nsg")
    arm.delete_nsg(rg, "n-nsg")
    assert arm.nic(rg, "n1") is None and arm.tagged(rg, "k", "v") == []


# -- VMs ----------------------------------------------------------------------------------------------

def test_vm_lifecycle(env: Env) -> None:
    """Create (Azure starts it: the fake's QEMU runs, on a disk with nothing bootable), get,
    power off, start, delete; what is attached cannot be deleted; a V2 disk needs a V2 size."""
    arm, rg, tags = env.arm, env.rg, {"rehost-vm": "vm1"}
    src = vhd_blob(env, "vm1.vhd", bytes(MiB))
    disk = arm.create_disk_import(rg, "vm1-disk0", LOCATION, src.url, account_id(env), generation="V1",
                                  os_type="Linux", sku="Standard_LRS", tags=tags)
    data = arm.create_disk_import(rg, "vm1-disk1", LOCATION, src.url, account_id(env), generation="V1",
                                  os_type=None, sku="Standard_LRS", tags=tags)
    v2 = arm.create_disk_import(rg, "vm1-v2", LOCATION, src.url, account_id(env), generation="V2",
                                os_type="Linux", sku="Standard_LRS", tags=tags)
    nsg = arm.create_nsg(rg, "vm1-nsg", LOCATION, tags)
    nic = arm.create_nic(rg, "vm1-nic", LOCATION, env.subnet_id(), nsg, None, tags)
    with pytest.raises(BackendError, match=r"BadRequest: .*Standard_A1_v2.*Generation '2'"):
        arm.create_vm(rg, "vm1", LOCATION, "Standard_A1_v2", v2.id, [], nic.id, os_type="Linux", tags=tags)
    with pytest.raises(BackendError, match="SkuNotAvailable"):
        arm.create_vm(rg, "vm1", LOCATION, "Standard_Nope", disk.id, [], nic.id, os_type="Linux", tags=tags)
    vm = arm.create_vm(rg, "vm1", LOCATION, "Standard_B1s", disk.id, [data.id], nic.id, os_type="Linux",
                       tags=tags)
    try:
        assert vm.power_state == "running" and vm.size == "Standard_B1s" and vm.tags == tags
        assert (vm.os_disk_id, vm.data_disk_ids, vm.nic_ids) == (disk.id, [data.id], [nic.id])
        assert arm.disk(rg, "vm1-disk0").state == "Attached"  # type: ignore[union-attr]
        assert arm.nic(rg, "vm1-nic").vm_id == vm.id  # type: ignore[union-attr]
        assert len(qemu_pids(env.fake.folder)) >= 1
        with pytest.raises(BackendError, match="NicInUse"):
            arm.delete_nic(rg, "vm1-nic")
        with pytest.raises(BackendError, match="OperationNotAllowed"):
            arm.delete_disk(rg, "vm1-disk1")
        arm.power_off_vm(rg, "vm1")
        assert arm.vm(rg, "vm1").power_state == "stopped"  # type: ignore[union-attr]
        arm.start_vm(rg, "vm1")
        assert arm.vm(rg, "vm1").power_state == "running"  # type: ignore[union-attr]
        arm.deallocate_vm(rg, "vm1")
        assert arm.vm(rg, "vm1").power_state == "deallocated"  # type: ignore[union-attr]
        made = sorted([vm.id, disk.id, data.id, v2.id, nsg, nic.id])
        assert sorted(arm.tagged(rg, "rehost-vm", "vm1")) == made
        # generation 2: q35 with UEFI firmware (the disk boots nothing: OVMF ends in its shell)
        nic2 = arm.create_nic(rg, "vm2-nic", LOCATION, env.subnet_id(), None, None, tags)
        assert arm.create_vm(rg, "vm2", LOCATION, "Standard_B1s", v2.id, [], nic2.id, os_type="Linux",
                             tags=tags).power_state == "running"
        cmd = (env.fake.folder / "vm-vm2" / "qemu.cmd").read_text()
        assert "-machine q35" in cmd and "OVMF_CODE.fd" in cmd and "format=vpc,if=ide" in cmd
    finally:
        arm.delete_vm(rg, "vm1")
        arm.delete_vm(rg, "vm2")
        arm.delete_nic(rg, "vm2-nic")
    arm.delete_vm(rg, "vm1")
    assert arm.vm(rg, "vm1") is None and not (env.fake.folder / "vm-vm1").exists()
    assert arm.disk(rg, "vm1-disk0").state == "Unattached"  # type: ignore[union-attr]
    arm.delete_nic(rg, "vm1-nic")
    arm.delete_nsg(rg, "vm1-nsg")
    for d in ("vm1-disk0", "vm1-disk1", "vm1-v2"):
        arm.delete_disk(rg, d)
    assert arm.tagged(rg, "rehost-vm", "vm1") == []


def test_state_survives_a_restart_of_the_fake(azurite: Azurite, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake is a process many CLI commands share; its state (and issued tokens) outlive
    a restart on the same folder."""
    with ArmFake(tmp_path / "fake", azurite) as fake:
        monkeypatch.setenv("AZURE_CLIENT_SECRET", fake.client_secret)
        rg = seed(fake)
        arm = make_arm(fake)
        arm.create_nsg(rg, "kept", LOCATION, {"k": "v"})
        first = fake.requests()
    with ArmFake(tmp_path / "fake", azurite, port=fake.port) as again:
        # same folder and port: same principal and CA; the credential's cached token still works
        later = Arm(SUB, arm.credential, again.endpoints())
        assert later.tagged(rg, "k", "v") == [arm._rid(rg, "Microsoft.Network/networkSecurityGroups", "kept")]
        assert not any(q["path"].endswith("/token") for q in again.requests())
    assert any(q["path"].endswith("/token") for q in first)


def test_fake_says_it_is_a_fake() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rehost.testkit.azure_arm", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "NOT Azure" in out and "CONTRACT FAKE" in out


# -- faults, sign-in, secrets ------------------------------------------------------------------------

def test_throttling_and_server_errors_are_retried_a_conflict_is_not(env: Env) -> None:
    arm, rg, fake = env.arm, env.rg, env.fake
    arm.resource_group(rg)  # signed in
    before = len(fake.requests())
    fake.inject(429, method="GET", path_contains="/virtualNetworks/prod", times=2, retry_after=0)
    assert arm.virtual_network(rg, "prod") is not None
    fake.inject(500, method="PUT", path_contains="/networkSecurityGroups/r-nsg", times=1)
    arm.create_nsg(rg, "r-nsg", LOCATION, {})
    fake.inject(503, method="POST", path_contains="/listKeys", times=1)
    assert arm.storage_key(rg, ACCOUNT) == ACCOUNT_KEY  # a POST is retried too
    log = [(q["method"], q["path"].rsplit("/", 1)[-1], q["status"]) for q in fake.requests()[before:]
           if "/operations/" not in q["path"]]
    assert log[:3] == [("GET", "prod", 429), ("GET", "prod", 429), ("GET", "prod", 200)]
    assert log[3:5] == [("PUT", "r-nsg", 500), ("PUT", "r-nsg", 201)]
    assert log[-2:] == [("POST", "listKeys", 503), ("POST", "listKeys", 200)]

    before = len(fake.requests())
    fake.inject(409, method="DELETE", path_contains="/networkSecurityGroups/r-nsg")
    with pytest.raises(BackendError, match=r"delete network security group .*/r-nsg: Conflict: Inj") as err:
        arm.delete_nsg(rg, "r-nsg")
    assert not err.value.retryable
    assert [q["status"] for q in fake.requests()[before:]] == [409]  # not retried
    arm.delete_nsg(rg, "r-nsg")

    fake.inject(500, path_contains="/virtualNetworks/test", times=10)
    with pytest.raises(BackendError, match="InternalServerError") as err:
        make_arm(fake, retries=2).virtual_network(rg, "test")
    assert err.value.retryable
    fake.clear_faults()


def test_wrong_secret_fails_clearly(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", wrong)
    with pytest.raises(BackendError, match=r"read resource group .*sign-in failed.*AADSTS7000215") as err:
        make_arm(env.fake).resource_group(env.rg)
    assert wrong not in str(err.value) and env.fake.client_secret not in str(err.value)
    assert [q["status"] for q in env.fake.requests()[-1:]] == [401]  # no Resource Manager call made


def test_without_a_token_arm_answers_401(env: Env) -> None:
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(env.fake.ca_file))
    url = f"{env.fake.url}/subscriptions/{SUB}/resourcegroups/{env.rg}?api-version=2024-03-01"
    req = urllib.request.Request(url)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx)
    assert err.value.code == 401 and b'"AuthenticationFailed"' in err.value.read()


def test_no_sas_signature_token_or_key_in_debug_logs_or_errors(env: Env,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    arm, rg = env.arm, env.rg
    token = credential(env.fake.tenant_id, env.fake.client_id, env.fake.endpoints()).get_token(
        env.fake.url + "/.default").token
    src = vhd_blob(env, "s.vhd", os.urandom(MiB))
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="azure"), caplog.at_level(logging.DEBUG, logger="urllib3"):
        key = arm.storage_key(rg, ACCOUNT)
        arm.create_disk_import(rg, "s-disk0", LOCATION, src.url, account_id(env), generation="V1",
                               os_type=None, sku="Standard_LRS", tags={})
        sas = arm.grant_disk_access(rg, "s-disk0", write=False)
        PageBlob.from_url(sas).read(0, 512)
        for bad in (lambda: arm.grant_disk_access(rg, "s-disk0", write=True),
                    lambda: arm.delete_disk(rg, "s-disk0"),  # refused while its SAS is open
                    lambda: PageBlob.from_url(sas.replace("/abcd?", "/nope?"), retries=0).read(0, 512)):
            with pytest.raises(BackendError) as err:
                bad()
            texts.append(str(err.value))
        arm.revoke_disk_access(rg, "s-disk0")
        arm.delete_disk(rg, "s-disk0")
    text = caplog.text + "\n".join(texts)
    assert "DEBUG" in caplog.text and "/disks/s-disk0" in caplog.text  # the logs were captured
    sig = parse_qs(urlsplit(sas).query)["sig"][0]
    for secret in (sig, quote(sig, safe=""), token, key, env.fake.client_secret):
        assert secret not in text
    # the fake's own request log keeps no token or SAS either
    assert token not in str(env.fake.requests()) and sig not in str(env.fake.requests())


# -- the one boot -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ide_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Linux with IDE drivers: a generation 1 VM's disk under the fake's QEMU."""
    import shutil

    from rehost.testkit.tinylinux import build_tiny_linux

    if os.geteuid() != 0 or shutil.which("extlinux") is None:
        pytest.skip("building the tiny Linux image needs root and extlinux")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return build_tiny_linux(tmp_path_factory.mktemp("ideguest") / "guest.img", marker="arm1",
                            extra_modules=("ata_piix", "sd_mod"), guest_agent=False)


def _extents(path: Path) -> Iterator[tuple[int, int, bytes | None]]:
    with open(path, "rb") as f:
        off = 0
        while chunk := f.read(4 * MiB):
            yield off, len(chunk), None if not chunk.strip(b"\0") else chunk
            off += len(chunk)


@pytest.mark.slow
def test_vm_boots_the_imported_disk(env: Env, ide_guest: Path) -> None:
    """A fixed VHD in a blob, imported as a managed disk, boots in the fake's VM: the boot
    diagnostics serial log shows the guest's marker. Then everything made is deleted."""
    arm, rg, tags = env.arm, env.rg, {"rehost-vm": "boot"}
    size = ide_guest.stat().st_size
    blob = PageBlob(env.blobs(), "boot.vhd")
    blob.create(padded_size(size) + FOOTER_SIZE, {})
    upload_disk(blob, size, _extents(ide_guest))
    disk = arm.create_disk_import(rg, "boot-disk0", LOCATION, blob.url, account_id(env), generation="V1",
                                  os_type="Linux", sku="Standard_LRS", tags=tags)
    blob.delete()
    nsg = arm.create_nsg(rg, "boot-nsg", LOCATION, tags)
    nic = arm.create_nic(rg, "boot-nic", LOCATION, env.subnet_id(), nsg, None, tags)
    t0 = time.monotonic()
    vm = arm.create_vm(rg, "boot", LOCATION, "Standard_B1s", disk.id, [], nic.id, os_type="Linux", tags=tags)
    pid = int((env.fake.folder / "vm-boot" / "qemu.pid").read_text())
    log = ""
    try:
        while time.monotonic() - t0 < 120 and "REHOST-BOOT-OK" not in log:
            time.sleep(2)
            log = arm.serial_log(rg, "boot")
        assert "REHOST-BOOT-OK marker=arm1" in log, log[-2000:]
        print(f"\nboot to marker: {time.monotonic() - t0:.1f}s")
    finally:
        arm.delete_vm(rg, "boot")
    assert arm.vm(rg, "boot") is None and not os.path.exists(f"/proc/{pid}")
    arm.delete_nic(rg, "boot-nic")
    arm.delete_nsg(rg, "boot-nsg")
    arm.delete_disk(rg, "boot-disk0")
    assert arm.tagged(rg, "rehost-vm", "boot") == [] and vm.id
