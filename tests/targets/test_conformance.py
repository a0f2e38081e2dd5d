"""The ``Target`` contract, run against every target kind in the registry.

Modelled on restic's backend test suite (and ``tests/repository/storage/test_conformance.py``):
one set of behaviours, no kind-specific ifs in the assertions. Each kind gets a real vault
with a real recovery point; disks reach the target the way the failover services hand them
over (NBD exports for targets that boot from NBD, ``stage_disk`` for the others). Every
operation is run twice and must come out the same: a job resumed after a kill -9 does that.

``local`` boots the tiny Linux under TCG (slow); ``azure`` talks to Azurite and the Resource
Manager contract fake (not Azure), whose VMs boot the tiny Linux under QEMU (slow); ``memory``
is the labelled test double (fast).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rehost.errors import InvalidState
from rehost.targets import registry
from rehost.targets.azure.target import AzureTarget
from rehost.targets.base import Extent, Placement, PointDisk, Target, VerifyReport
from rehost.vault import instant
from rehost.vault.failover import DEFAULT_BOOT_MARKER
from rehost.vault.inventory import get_machine, spec_of
from tests.cli_helpers import qemu_img_compare
from tests.targets.helpers import World, world

SUB = "33333333-4444-4555-8666-777777777777"

VM = "conformance-vm"
KINDS = [pytest.param("memory", id="memory"), pytest.param("local", id="local", marks=pytest.mark.slow),
         pytest.param("azure", id="azure", marks=pytest.mark.slow)]


def test_every_registered_kind_is_covered() -> None:
    assert {p.kind for p in registry.plugins()} == {"local", "memory", "azure"}  # add new kinds to KINDS


@dataclass
class Case:
    world: World
    target: Target
    expected: str  # the boot line the point's guest shows

    def disks(self) -> list[PointDisk]:
        """The point's disks as the failover services hand them to this target."""
        w = self.world
        point = w.vault.repo.load_point_exact(w.points[-1])
        if self.target.capabilities.boots_from_nbd:
            return instant.start_point_servers(w.vault, get_machine(w.vault, w.machine), point, VM)
        out = []
        spec = spec_of(get_machine(w.vault, w.machine))
        for d in point.disks:
            disk = PointDisk(d.index, d.size, point.id)
            self.target.stage_disk(VM, disk, w.vault.repo.iter_disk(point, d.index), spec=spec)
            out.append(disk)
        return out

    def create(self) -> Placement:
        machine = get_machine(self.world.vault, self.world.machine)
        return self.target.create(spec_of(machine), VM, self.disks())

    def disk0_equals_point(self) -> bool:
        """What the machine's first disk reads now, against the source image (the latest point)."""
        if isinstance(self.target, AzureTarget):  # the managed disk, downloaded through a read SAS
            return _managed_disk0_equals(self.target, self.world)
        disk = next(p for p in self.world.target_path.joinpath(VM).iterdir()
                    if p.name.startswith("disk0.") and p.suffix in (".img", ".qcow2"))
        return qemu_img_compare(disk, self.world.image, "qcow2" if disk.suffix == ".qcow2" else "raw", "raw")


def _managed_disk0_equals(target: AzureTarget, w: World) -> bool:
    from rehost.targets.azure.blob import PageBlob
    from rehost.targets.azure.vhd import FOOTER_SIZE, check_fixed_vhd

    rg = target.settings.resource_group
    sas = target.arm.grant_disk_access(rg, f"{VM}-disk0", write=False)
    try:
        blob = PageBlob.from_url(sas)
        state = blob.state()
        assert state is not None
        whole = blob.read(0, state.size)
    finally:
        target.arm.revoke_disk_access(rg, f"{VM}-disk0")
    check_fixed_vhd(whole[-FOOTER_SIZE:], len(whole))
    raw = w.target_path.parent / "managed-disk0.raw"
    raw.write_bytes(whole[:-FOOTER_SIZE])
    padded = w.target_path.parent / "source-padded.raw"
    padded.write_bytes(w.image.read_bytes().ljust(len(whole) - FOOTER_SIZE, b"\0"))
    return qemu_img_compare(raw, padded, "raw", "raw")


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    image: Path | None = None
    marker = "conformance"
    if request.param == "local":
        from rehost.testkit.tinylinux import set_marker, set_mode

        request.getfixturevalue("need_qemu")
        image = request.getfixturevalue("tiny_image")
        set_marker(image, marker)
        set_mode(image, "stay")  # it keeps running until stopped
    options: dict[str, object] = {}
    if request.param == "azure":
        import secrets
        import shutil

        from rehost.testkit.tinylinux import set_marker

        fake = request.getfixturevalue("arm_fake")
        request.getfixturevalue("monkeypatch").setenv("AZURE_CLIENT_SECRET", fake.client_secret)
        image = tmp_path / "azure-guest.img"
        shutil.copyfile(request.getfixturevalue("azure_linux_base"), image)
        set_marker(image, marker)
        rg = "conf-" + secrets.token_hex(4)
        fake.seed(SUB, rg, "westeurope", storage_account="devstoreaccount1", vnets={
            "prod": {"address_prefix": "10.1.0.0/16", "subnets": {"default": "10.1.0.0/24"}},
            "test": {"address_prefix": "10.2.0.0/16", "subnets": {"default": "10.2.0.0/24"}}})
        options = {"subscription": SUB, "resource_group": rg, "location": "westeurope", "network": "prod",
                   "subnet": "default", "test_network": "test", "storage_account": "devstoreaccount1",
                   "container": rg, "tenant_id": fake.tenant_id, "client_id": fake.client_id,
                   "resource_manager": fake.url, "authority_host": fake.url, "ca_bundle": str(fake.ca_file)}
        (tmp_path / "target").mkdir()
    with world(tmp_path, request.param, image, markers=(marker,), **options) as w:
        target = w.target()
        try:
            yield Case(w, target, f"REHOST-BOOT-OK marker={marker}")
        finally:
            placement = target.find(VM)
            if placement is not None:
                target.remove(placement)
            instant.stop_point_servers(w.vault, VM)


def test_capabilities_and_networks(case: Case) -> None:
    caps = case.target.capabilities
    assert caps.boots_from_nbd != caps.stages_disks
    names = [n.name for n in case.target.networks()]
    assert len(names) == len(set(names)) and any(not n.isolated for n in case.target.networks())
    if caps.test_network is not None:
        assert next(n for n in case.target.networks() if n.name == caps.test_network).isolated
    # what the kind declares is what an instance does (the test network's name aside: Azure's
    # comes from the target's config)
    assert replace(registry.get(case.target.kind).capabilities, test_network=caps.test_network) == caps
    assert (registry.get(case.target.kind).capabilities.test_network is None) == (caps.test_network is None)


def test_verify_twice_changes_nothing(case: Case) -> None:
    first = case.target.verify()
    assert isinstance(first, VerifyReport) and first.ok, first.failures()
    assert case.target.verify() == first
    assert case.target.find(VM) is None


def test_lifecycle_every_step_twice(case: Case) -> None:
    t = case.target
    assert t.find(VM) is None
    created = case.create()
    assert case.create() == created == t.find(VM)
    assert not t.is_running(created)
    assert case.disk0_equals_point()

    net = next(n.name for n in t.networks() if not n.isolated)
    started = t.start(created, net)
    assert t.start(started, net) == started  # not a second machine
    assert t.is_running(started) and started.network == net

    assert t.boot_verdict(started, DEFAULT_BOOT_MARKER, 120) == case.expected
    assert t.boot_verdict(started, DEFAULT_BOOT_MARKER, 120) == case.expected

    t.hydrate(started)
    t.hydrate(started)
    t.stop(started, graceful_timeout=5)
    t.stop(started, graceful_timeout=5)
    assert not t.is_running(started)

    t.remove(started)
    t.remove(started)
    assert t.find(VM) is None


def test_the_verdict_can_fail(case: Case) -> None:
    t = case.target
    placement = t.start(case.create(), next(n.name for n in t.networks() if not n.isolated))
    with pytest.raises(InvalidState, match="NEVER-SHOWN"):
        t.boot_verdict(placement, r"NEVER-SHOWN-\d{9}", 3)
    assert t.boot_verdict(placement, DEFAULT_BOOT_MARKER, 120) == case.expected  # it did boot


def test_a_machine_is_not_made_without_its_data(case: Case) -> None:
    point = case.world.vault.repo.load_point_exact(case.world.points[-1])
    spec = spec_of(get_machine(case.world.vault, case.world.machine))
    with pytest.raises(InvalidState):
        case.target.create(spec, VM, [PointDisk(0, point.disks[0].size, point.id)])


def test_staging_twice_reads_the_point_once(case: Case) -> None:
    """A stage step resumed after a kill finds the disk it staged and does not read it again."""
    if not case.target.capabilities.stages_disks:
        pytest.skip(f"{case.target.kind} boots from NBD: it stages no disks")
    case.disks()

    def must_not_be_read() -> Iterable[Extent]:
        raise AssertionError("the point was read again")
        yield (0, 0, None)

    point = case.world.vault.repo.load_point_exact(case.world.points[-1])
    case.target.stage_disk(VM, PointDisk(0, point.disks[0].size, point.id), must_not_be_read())
    placement = case.create()
    assert case.disk0_equals_point() and placement == case.target.find(VM)


def test_a_stage_cut_short_leaves_no_staged_disk(case: Case) -> None:
    if not case.target.capabilities.stages_disks:
        pytest.skip(f"{case.target.kind} boots from NBD: it stages no disks")
    point = case.world.vault.repo.load_point_exact(case.world.points[-1])

    def cut() -> Iterable[Extent]:
        yield from list(case.world.vault.repo.iter_disk(point, 0))[:2]
        raise subprocess.TimeoutExpired("upload", 1)  # any error half way

    with pytest.raises(subprocess.TimeoutExpired):
        case.target.stage_disk(VM, PointDisk(0, point.disks[0].size, point.id), cut())
    spec = spec_of(get_machine(case.world.vault, case.world.machine))
    with pytest.raises(InvalidState, match="not staged"):
        case.target.create(spec, VM, [PointDisk(0, point.disks[0].size, point.id)])
