"""The ``azure`` target end to end against Azurite (real blob storage) and rehost's Resource
Manager contract fake (HTTPS; not Azure): verify, replicas synced per point, managed disks
that equal the point, a boot verified from the boot diagnostics serial log, a cleanup that
leaves nothing behind, complete that removes the replicas; no SAS signature anywhere."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rehost.targets.azure.blob import PageBlob
from rehost.targets.azure.target import AzureTarget
from rehost.targets.base import PointDisk
from rehost.testkit.azure_arm import ArmFake
from rehost.testkit.azurite import Azurite
from rehost.vault import cycles, inventory, overview, targets
from rehost.vault.vault import Vault
from tests.cli_helpers import REHOST, REPO, rehost
from tests.targets.azure.helpers import check_replica, scatter

MiB = 1 << 20
SUB = "11111111-2222-4333-8444-555555555555"
LOCATION = "westeurope"
VNETS = {"prod": {"address_prefix": "10.1.0.0/16", "subnets": {"default": "10.1.0.0/24"}},
         "test": {"address_prefix": "10.2.0.0/16", "subnets": {"default": "10.2.0.0/24"}}}


def seed(fake: ArmFake, **kw: Any) -> str:
    """A resource group of its own per test (the fake is shared by the session)."""
    rg = "rg-" + secrets.token_hex(4)
    fake.seed(SUB, rg, kw.pop("location", LOCATION), vnets=kw.pop("vnets", VNETS),
              storage_account=kw.pop("storage_account", "devstoreaccount1"), **kw)
    return rg


def options(fake: ArmFake, rg: str, **kw: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resource_group": rg, "location": LOCATION, "network": "prod",
            "subnet": "default", "test_network": "test", "storage_account": "devstoreaccount1",
            "container": "c" + rg.replace("rg-", ""),
            "tenant_id": fake.tenant_id, "client_id": fake.client_id,
            "resource_manager": fake.url, "authority_host": fake.url, "ca_bundle": str(fake.ca_file), **kw}


@pytest.fixture
def secret(arm_fake: ArmFake, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", arm_fake.client_secret)
    return arm_fake.client_secret


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.init(tmp_path / "vault")
    yield v
    v.close()


def random_image(path: Path, size: int, data_mib: int, seed: int = 1) -> Path:
    """A disk with ``data_mib`` MiB of random data spread over it, the rest holes."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(data_mib):
            f.seek((i * (size // max(1, data_mib))) // MiB * MiB)
            f.write(rng.randbytes(MiB))
    return path


def test_verify_names_each_check_and_its_fix(arm_fake: ArmFake, secret: str) -> None:
    good = AzureTarget(targets.registry.get("azure").make_config(options(arm_fake, seed(arm_fake))))
    report = good.verify()
    assert report.ok, report.failures()
    names = [c.name for c in report.checks]
    for n in ("sign-in", "resource group", "location", "failover network", "test network",
              "test network isolated", "storage account", "replica storage", "permissions"):
        assert n in names
    peered = {"prod": {**VNETS["prod"], "peerings": ["test"]}, "test": VNETS["test"]}
    rg = seed(arm_fake, vnets=peered, read_only=True)
    bad = AzureTarget(targets.registry.get("azure").make_config(options(arm_fake, rg, subnet="nope")))
    checks = {c.name: c for c in bad.verify().checks}
    net = checks["failover network"]
    assert not net.ok and "has no subnet nope (default)" in net.detail
    assert not checks["permissions"].ok and "Microsoft.Compute/disks/write" in checks["permissions"].detail
    bad = AzureTarget(targets.registry.get("azure").make_config(options(arm_fake, rg)))
    checks = {c.name: c for c in bad.verify().checks}
    assert not checks["test network isolated"].ok and "peered" in checks["test network isolated"].detail
    # the storage account in another region than --location: managed disks cannot import from it
    west = {name: {**v, "location": LOCATION} for name, v in VNETS.items()}
    rg = seed(arm_fake, location="northeurope", vnets=west)
    far = AzureTarget(targets.registry.get("azure").make_config(options(arm_fake, rg)))
    checks = {c.name: c for c in far.verify().checks}
    assert checks["failover network"].ok and checks["test network isolated"].ok
    account = checks["storage account"]
    assert not account.ok and "is in northeurope, not westeurope" in account.detail, account.detail
    # a wrong secret: one failed check that says what to look at, and no secret in it
    os.environ["AZURE_CLIENT_SECRET"] = "wrong-" + secret
    try:
        checks = {c.name: c for c in good.__class__(good.settings).verify().checks}
    finally:
        os.environ["AZURE_CLIENT_SECRET"] = secret
    assert list(checks) == ["sign-in"] and not checks["sign-in"].ok
    assert secret not in checks["sign-in"].detail and "AZURE_CLIENT_SECRET" in checks["sign-in"].detail


def test_limits_are_checked_before_replication(arm_fake: ArmFake, secret: str, vault: Vault,
                                               tmp_path: Path) -> None:
    targets.add_target(vault, "azure", "az", options(arm_fake, seed(arm_fake)))
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate((2 << 40) + MiB)  # 2 TiB + 1 MiB: too big for a Gen1 (BIOS) OS disk
    inventory.add_image_source(vault, "big", [big])
    with pytest.raises(Exception, match=r"does not fit target az: disk 0 size"):
        cycles.replicate_job(vault, "big")


def test_replica_synced_per_point_only_what_changed(arm_fake: ArmFake, secret: str, vault: Vault,
                                                   tmp_path: Path, azurite: Azurite) -> None:
    rg = seed(arm_fake)
    targets.add_target(vault, "azure", "az", options(arm_fake, rg))
    image = random_image(tmp_path / "d.img", 64 * MiB, 16)
    inventory.add_image_source(vault, "web", [image])
    first = cycles.replicate_job(vault, "web")
    assert first.replica and first.replica["state"] == "succeeded", first.replica
    assert 16 * MiB <= first.replica["bytes_written"] <= 16 * MiB + 4096
    again = cycles.replicate_job(vault, "web")  # nothing changed: no page written
    assert again.replica and again.replica["bytes_written"] == 0 and again.replica["state"] == "succeeded"
    changed = scatter(image, 0.01, seed=5)
    delta = cycles.replicate_job(vault, "web")
    assert delta.replica, delta
    assert changed * 0.9 <= delta.replica["bytes_written"] <= changed * 1.1, (changed, delta.replica)
    view = overview.machine_view(vault, inventory.get_machine(vault, "web"), vault.repo.list_points(
        inventory.get_machine(vault, "web").id))
    assert view["replica"]["point"] == delta.point.id and view["replica"]["target"] == "az"
    assert view["health"]["status"] == "healthy", view["health"]
    target = targets.provider(targets.get_target(vault, "az"))
    assert isinstance(target, AzureTarget)
    # the replica's snapshot of the newest point is the point, byte for byte
    replica = target._replica("web", 0)
    from rehost.targets.azure.pageblob import point_snapshots

    snaps = point_snapshots(replica)
    assert set(snaps) == {p.id for p in vault.repo.list_points(inventory.get_machine(vault, "web").id)}
    check_replica(replica, vault.repo, delta.point, tmp_path, snaps[delta.point.id])


def test_staged_managed_disk_equals_the_point(arm_fake: ArmFake, secret: str, vault: Vault,
                                              tmp_path: Path) -> None:
    """What failover stages: a managed disk imported from a copy of the replica's snapshot;
    downloaded (read access SAS) it is a fixed VHD qemu-img reads, equal to the point."""
    rg = seed(arm_fake)
    targets.add_target(vault, "azure", "az", options(arm_fake, rg))
    image = random_image(tmp_path / "d.img", 40 * MiB + 3584, 6)  # not a whole MiB: padded
    inventory.add_image_source(vault, "db", [image])
    r = cycles.replicate_job(vault, "db")
    target = targets.provider(targets.get_target(vault, "az"))
    assert isinstance(target, AzureTarget)
    spec = inventory.spec_of(inventory.get_machine(vault, "db"))
    requests_before = len(arm_fake.requests())

    def must_not_be_read() -> Iterator[Any]:
        raise AssertionError("the replica holds the point: its data must not be read")
        yield

    target.stage_disk("db-test", PointDisk(0, spec.disks[0].size, r.point.id, machine="db"),
                      must_not_be_read(), spec=spec)
    target.stage_disk("db-test", PointDisk(0, spec.disks[0].size, r.point.id, machine="db"),
                      must_not_be_read(), spec=spec)  # again: finds it, makes nothing
    made = target.arm.disk(rg, "db-test-disk0")
    assert made is not None and made.tags["rehost-point"] == r.point.id and made.state == "Unattached"
    assert made.generation == "V1"
    puts = [q for q in arm_fake.requests()[requests_before:]
            if q["method"] == "PUT" and "/disks/" in q["path"]]
    assert len(puts) == 1, puts
    sas = target.arm.grant_disk_access(rg, "db-test-disk0", write=False)
    try:
        check_replica(PageBlob.from_url(sas), vault.repo, r.point, tmp_path)
    finally:
        target.arm.revoke_disk_access(rg, "db-test-disk0")
    # what the test did not make stays: a NIC of the operator's, another VM's tagged NSG
    prod = target.arm.virtual_network(rg, "prod")
    assert prod is not None
    theirs = target.arm.create_nic(rg, "db-test-nic-ops", LOCATION, prod.subnets[0].id, None, None, {})
    other = target.arm.create_nsg(rg, "db-test2-nsg", LOCATION, {"rehost-vm": "db-test2"})
    placement = target.find("db-test")
    assert placement is not None
    target.remove(placement)
    assert target.arm.tagged(rg, "rehost-vm", "db-test") == []
    assert target.arm.disk(rg, "db-test-disk0") is None
    assert target.arm.nic(rg, "db-test-nic-ops") is not None
    assert target.arm.tagged(rg, "rehost-vm", "db-test2") == [other]
    assert target._replica("db", 0).state() is not None  # the machine's replica is not the test's
    target.arm.delete_nic(rg, theirs.name)
    target.arm.delete_nsg(rg, "db-test2-nsg")


def test_kill9_during_a_sync_then_the_next_cycle_resumes(arm_fake: ArmFake, secret: str,
                                                         tmp_path: Path) -> None:
    vault_dir = tmp_path / "vault"
    rehost(vault_dir, "init")
    rg = seed(arm_fake)
    opts = options(arm_fake, rg, sync_workers=1)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    env = {"AZURE_CLIENT_SECRET": secret}
    rehost(vault_dir, "target", "add", "azure", "az", *args, env=env)
    image = random_image(tmp_path / "d.img", 160 * MiB, 128)
    rehost(vault_dir, "source", "add", "image", "web", str(image))
    journal = vault_dir / "cache" / "replicas"
    proc = subprocess.Popen([*REHOST, "--vault", str(vault_dir), "replicate", "web"], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl")) \
            if journal.exists() else 0
        if lines >= 8:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl"))
    assert landed >= 8
    r = rehost(vault_dir, "replicate", "web", "--json", env=env).json()
    replica = r["replica"]
    assert replica["state"] == "succeeded", replica
    # the interrupted sync was finished without rewriting what had landed, then the new point
    assert "resum" in replica["note"] or replica["bytes_written"] < 128 * MiB, replica
    health = rehost(vault_dir, "machines", "--json", env=env).json()[0]
    assert health["replica"]["point"] == r["point"]


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if s["name"] == name)


@pytest.mark.slow
def test_migrate_to_azure_through_the_cli(arm_fake: ArmFake, secret: str, azure_linux_base: Path,
                                          tmp_path: Path) -> None:
    """A user's lifecycle, each command its own process: the boot verdict comes from the
    serial log of a VM that booted exactly the uploaded bytes; cleanup leaves nothing; complete
    removes the replicas and keeps the VM; no SAS signature in any output."""
    from rehost.testkit.tinylinux import set_marker

    image = tmp_path / "web.img"
    shutil.copyfile(azure_linux_base, image)
    set_marker(image, "az1")
    vault_dir = tmp_path / "vault"
    env = {"AZURE_CLIENT_SECRET": secret}
    outputs: list[str] = []

    def run(*args: str) -> Any:
        r = rehost(vault_dir, *args, env=env)
        outputs.append(r.out + r.err)
        return r

    run("init")
    rg = seed(arm_fake)
    opts = options(arm_fake, rg, tags=["owner=tests"])
    run("target", "add", "azure", "az",
        *[f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if k != "tags"],
        "--tags", "owner=tests")
    assert "permissions" in run("target", "verify", "az").out
    run("source", "add", "image", "web", str(image))
    run("replicate", "web")
    test = run("failover", "web", "--test", "--json").json()
    assert test["state"] == "succeeded", test
    assert "REHOST-BOOT-OK marker=az1" in step(test, "verify_boot")["detail"]
    target = AzureTarget(targets.registry.get("azure").make_config(opts))
    vm = target.arm.vm(rg, "web-test")
    assert vm is not None and vm.power_state == "running" and vm.tags["owner"] == "tests"
    # on the test network: its NIC has an address of the test subnet (10.2.0.0/24), not prod's
    nic = target.arm.nic(rg, "web-test-nic")
    assert nic is not None and nic.private_ip.startswith("10.2.0."), nic
    assert vm.tags["rehost-network"] == "test/default"
    made = set(target.arm.tagged(rg, "rehost-vm", "web-test"))
    assert len(made) >= 4, made  # VM, NIC, NSG, disk
    run("failover", "web", "--cleanup")
    assert target.arm.tagged(rg, "rehost-vm", "web-test") == []
    assert target.arm.vm(rg, "web-test") is None
    set_marker(image, "az2")
    delta = run("replicate", "web", "--json").json()
    assert delta["replica"]["state"] == "succeeded" and 0 < delta["replica"]["bytes_written"] < 2 * MiB
    real = run("failover", "web", "--shutdown-source", "--json").json()
    assert real["state"] == "succeeded", real
    assert "REHOST-BOOT-OK marker=az2" in step(real, "verify_boot")["detail"]
    assert step(real, "verify_boot")["detail"].startswith("boot-diagnostics: ")
    # the final sync made a point that changed nothing: bringing the replica to it wrote nothing
    assert step(real, "stage_disks")["detail"].endswith("replica synced to it first: 0 B written")
    nic = target.arm.nic(rg, "web-nic")
    assert nic is not None and nic.private_ip.startswith("10.1.0."), nic  # the failover subnet
    run("complete", "web")
    assert target.arm.vm(rg, "web") is not None and target.arm.disk(rg, "web-disk0") is not None
    replica = target._replica("web", 0)
    assert replica.state() is None and replica.snapshots() == {}  # the replica and its snapshots
    machines = run("machines", "--json").json()
    assert machines[0]["state"] == "migration_completed"
    jobs = run("jobs", "--json").json()
    for j in jobs:
        outputs.append(json.dumps(run("job", j["id"], "--json").json()))
    # what the API answers about it
    from fastapi.testclient import TestClient

    from rehost.api.tokens import create_token
    from rehost.portal.app import create_app

    v = Vault.open(vault_dir)
    try:
        token = create_token(v, "reader", "reader")[1]
    finally:
        v.close()
    with TestClient(create_app(vault_dir)) as api:
        for path in ("/machines", "/jobs", "/targets", *(f"/jobs/{j['id']}" for j in jobs)):
            answer = api.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            outputs.append(answer.text)
    text = "\n".join(outputs)
    assert "sig=" not in text and secret not in text and "AccountKey" not in text


def test_direct_upload_and_the_source_private_ip(arm_fake: ArmFake, secret: str, vault: Vault,
                                                 tmp_path: Path) -> None:
    """``--direct-upload``: no replica; the point goes straight into a managed disk opened for
    upload (grant write, Put Page, revoke), equal to the point. ``--keep-private-ip``: the NIC
    gets the source's address when it is in the subnet and free, else Azure picks and the
    placement says why."""
    from dataclasses import replace

    from rehost.spec import NicSpec

    rg = seed(arm_fake)
    targets.add_target(vault, "azure", "az", options(arm_fake, rg, direct_upload=True, keep_private_ip=True))
    target = targets.provider(targets.get_target(vault, "az"))
    assert isinstance(target, AzureTarget) and not target.capabilities.keeps_replicas
    image = random_image(tmp_path / "d.img", 24 * MiB, 5)
    inventory.add_image_source(vault, "app", [image])
    r = cycles.replicate_job(vault, "app")
    assert r.replica is None  # no replica kept: no sync step
    spec = replace(inventory.spec_of(inventory.get_machine(vault, "app")),
                   nics=(NicSpec("52:54:00:12:34:56", addresses=("10.1.0.50/24", "fe80::1/64")),))
    disk = PointDisk(0, spec.disks[0].size, r.point.id, machine="app")
    target.stage_disk("app", disk, vault.repo.iter_disk(r.point, 0), spec=spec)
    made = target.arm.disk(rg, "app-disk0")
    assert made is not None and made.state == "Unattached"  # upload closed (revoked)
    sas = target.arm.grant_disk_access(rg, "app-disk0", write=False)
    try:
        check_replica(PageBlob.from_url(sas), vault.repo, r.point, tmp_path)
    finally:
        target.arm.revoke_disk_access(rg, "app-disk0")
    placement = target.start(target.create(spec, "app", [disk]), "prod/default")
    assert placement.details["private_ip"] == "10.1.0.50" and "ip_note" not in placement.details
    target.remove(placement)
    assert target.arm.tagged(rg, "rehost-vm", "app") == []
    # the address is taken now: Azure picks one, and the placement says why
    prod = target.arm.virtual_network(rg, "prod")
    assert prod is not None
    other = target.arm.create_nic(rg, "squatter", LOCATION, prod.subnets[0].id, None, "10.1.0.50", {})
    assert other.private_ip == "10.1.0.50"
    target.stage_disk("app", disk, vault.repo.iter_disk(r.point, 0), spec=spec)
    placement = target.start(target.create(spec, "app", [disk]), "prod/default")
    assert placement.details["private_ip"] != "10.1.0.50"
    assert "10.1.0.50 is in use" in placement.details["ip_note"]
    target.remove(placement)
    target.arm.delete_nic(rg, "squatter")


def test_add_and_verify_through_the_api_stores_no_secret(arm_fake: ArmFake, secret: str,
                                                         tmp_path: Path) -> None:
    """``POST /api/v1/targets`` with kind ``azure`` takes the same options as ``rehost target
    add azure`` (ids, networks, storage account, size/SKU defaults, tags, endpoints); a
    secret is no option, and none of the vault's files holds it after add and verify."""
    from tests.api.portal import make_disk, make_vault, portal_for

    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"), replicate=False)
    rg = seed(arm_fake)
    with portal_for(tmp_path, tokens) as p:
        kinds = {k["kind"]: k for k in p.get("/targets/kinds").json()}
        names = {o["name"] for o in kinds["azure"]["options"]}
        assert names >= {"subscription", "resource_group", "location", "network", "subnet", "test_network",
                         "test_subnet", "storage_account", "vm_size", "disk_sku", "tags", "tenant_id",
                         "client_id", "resource_manager", "authority_host", "blob_endpoint", "direct_upload"}
        assert not [n for n in names if "secret" in n or "password" in n or "key" in n]
        config = options(arm_fake, rg, vm_size="Standard_B2s", disk_sku="Premium_LRS",
                         tags=["owner=api", "cost-centre=42"])
        refused = p.post("/targets", {"kind": "azure", "name": "az",
                                      "config": {**config, "client_secret": secret}}, role="admin")
        assert refused.status_code == 400 and "no option 'client_secret'" in refused.text
        assert secret not in refused.text
        r = p.post("/targets", {"kind": "azure", "name": "az", "config": config}, role="admin")
        assert r.status_code == 201, r.text
        settings = r.json()["settings"]
        assert settings["tags"] == ["owner=api", "cost-centre=42"] and settings["vm_size"] == "Standard_B2s"
        assert settings["disk_sku"] == "Premium_LRS" and settings["resource_manager"] == arm_fake.url
        verified = p.post("/targets/az/verify", role="operator")
        assert verified.status_code == 200, verified.text
        checks = {c["name"]: c for c in verified.json()["checks"]}
        assert verified.json()["ok"], checks
        assert {"sign-in", "test network isolated", "storage account", "vm size",
                "permissions"} <= set(checks)
        listed = p.get("/targets").text
        answers = r.text + verified.text + listed
    assert secret not in answers and "sig=" not in answers
    for f in (tmp_path / "vault").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_the_vm_size_must_take_the_machine_before_replication(arm_fake: ArmFake, secret: str, vault: Vault,
                                                              tmp_path: Path) -> None:
    """``--vm-size``: verify says whether the location offers it, with its generations and
    data disks; a machine with more data disks than it takes is refused before anything is
    replicated, and the fix names the option and a size that fits."""
    targets.add_target(vault, "azure", "az", options(arm_fake, seed(arm_fake), vm_size="Standard_A1_v2"))
    checks = {c.name: c for c in targets.verify_target(vault, "az").checks}
    assert checks["vm size"].ok and "V1" in checks["vm size"].detail
    assert "2 data disks" in checks["vm size"].detail, checks["vm size"].detail
    disks = [random_image(tmp_path / f"d{i}.img", 4 * MiB, 1, seed=i) for i in range(4)]
    inventory.add_image_source(vault, "wide", disks)  # an OS disk and 3 data disks
    with pytest.raises(Exception, match=r"does not fit target az: vm size: .*2 data disks, 3 needed"
                                        r".*use --vm-size Standard_DS1_v2") as err:
        cycles.replicate_job(vault, "wide")
    assert "use --size" not in str(err.value)
    machine = inventory.get_machine(vault, "wide")
    assert vault.repo.list_points(machine.id) == []


def test_health_says_the_replica_is_behind_and_why(arm_fake: ArmFake, secret: str, vault: Vault,
                                                   tmp_path: Path) -> None:
    """A sync that fails leaves the point committed and the replica behind: the item's health
    names the target, the point the replica holds and the error; the next cycle catches up."""
    rg = seed(arm_fake)
    targets.add_target(vault, "azure", "az", options(arm_fake, rg))
    image = random_image(tmp_path / "d.img", 16 * MiB, 2)
    inventory.add_image_source(vault, "web", [image])
    first = cycles.replicate_job(vault, "web")
    assert first.replica and first.replica["state"] == "succeeded"

    def health() -> dict[str, Any]:
        m = inventory.get_machine(vault, "web")
        view: dict[str, Any] = overview.machine_view(vault, m, vault.repo.list_points(m.id))
        return view

    assert health()["health"]["status"] == "healthy"
    scatter(image, 0.05, seed=3)
    arm_fake.inject(403, method="POST", path_contains=f"/resourceGroups/{rg}/providers/"
                    "Microsoft.Storage/storageAccounts/devstoreaccount1/listKeys", times=1)
    behind = cycles.replicate_job(vault, "web")
    assert behind.replica and behind.replica["state"] == "warning", behind.replica  # the point stands
    view = health()
    assert view["replica"]["point"] == first.point.id  # still the point it held
    reason = view["health"]["reason"]
    assert view["health"]["status"] == "warning", view["health"]
    assert "replica on target az is behind" in reason and "last sync failed" in reason, reason
    assert "Forbidden" in reason or "403" in reason, reason
    # the dashboard's item page says the same: the replica's target, its point and the error
    from fastapi.testclient import TestClient

    from rehost.api.tokens import create_token
    from rehost.portal.app import create_app

    token = create_token(vault, "viewer", "reader")[1]
    with TestClient(create_app(vault.root)) as ui:
        assert ui.post("/ui/login", data={"token": token}).status_code == 200
        page = ui.get("/ui/items/web").text
    assert "Replica on az" in page and first.point.id[:12] in page and "last sync failed" in page, page
    assert "replica on target az is behind" in page and "sig=" not in page
    caught_up = cycles.replicate_job(vault, "web")
    assert caught_up.replica and caught_up.replica["state"] == "succeeded"
    view = health()
    assert view["replica"]["point"] == caught_up.point.id and view["health"]["status"] == "healthy", view


def test_credential_without_a_secret_is_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret in the environment: ``DefaultAzureCredential`` (environment, managed identity,
    Azure CLI login) on the configured authority; with one: the service principal."""
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    from rehost.targets.azure.arm import ArmEndpoints, credential

    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    endpoints = ArmEndpoints("https://management.azure.com", "https://login.microsoftonline.com")
    assert isinstance(credential(None, None, endpoints), DefaultAzureCredential)
    assert isinstance(credential("tenant", "client", endpoints), DefaultAzureCredential)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cret")
    assert isinstance(credential(None, None, endpoints), DefaultAzureCredential)  # whose principal?
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    monkeypatch.setenv("AZURE_CLIENT_ID", "client")
    assert isinstance(credential(None, None, endpoints), ClientSecretCredential)
