"""Real VMware descriptors with real disk bytes: import as a user would (``rehost source
add-image``), replicate, export the point and let ``qemu-img compare`` judge it against the
disk that went in. The descriptors are VMware's (real_ovf/SOURCES.md); the disks are small
streamOptimized VMDKs made by qemu-img under the names the descriptors give, gzipped with
Python's gzip or split into chunks where the descriptor says so."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from rehost.vault import inventory
from rehost.vault.vault import Vault
from tests.cli_helpers import qemu_img_compare, rehost
from tests.disks.images import MiB, make_image, make_master
from tests.disks.test_ovf import build_ova, vmware_ovf

REAL = Path(__file__).parent / "real_ovf" / "ovf"
SIZE = 16 * MiB


def disk(folder: Path, name: str, seed: int, size: int = SIZE) -> tuple[Path, bytes]:
    """A raw master and the bytes of its streamOptimized VMDK."""
    master = folder / f"master-{seed}.raw"
    make_master(master, size, seed=seed)
    vmdk = folder / f"{seed}-{name}"
    make_image(master, "vmdk", vmdk, subformat="streamOptimized")
    return master, vmdk.read_bytes()


def real_ova(dest: Path, descriptor: str, members: dict[str, bytes]) -> Path:
    """An OVA as ovftool lays it out: VMware's descriptor first, then the disk members."""
    return build_ova(dest, (REAL / descriptor).read_text(), dict(members))


def exported_equal(vault: Path, machine: str, master: Path, tmp: Path, index: int = 0) -> bool:
    out = tmp / f"{machine}-{index}.raw"
    out.unlink(missing_ok=True)
    rehost(vault, "export", machine, "--disk", str(index), "--output", str(out))
    return qemu_img_compare(out, master)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    v = tmp_path / "vault"
    rehost(v, "init")
    return v


def test_vapp_imports_every_vm_with_its_startup_order(tmp_path: Path, vault: Path) -> None:
    """vCenter's vApp-BootOrder: two VMs, two machines; vm-b2 starts first (+22 s)."""
    m1, d1 = disk(tmp_path, "d1.vmdk", 1)
    m2, d2 = disk(tmp_path, "d2.vmdk", 2)
    ova = real_ova(tmp_path / "vApp-BootOrder.ova", "vApp-BootOrder.ovf",
                   {"vApp-BootOrder-disk1.vmdk": d1, "vApp-BootOrder-disk2.vmdk": d2})
    said = rehost(vault, "source", "add-image", "app", str(ova)).out
    assert "is a vApp of 2 VMs (vm-b1, vm-b2)" in said
    assert "1: app-vm-b2 (+22 s); 2: app-vm-b1 (+42 s)" in said.replace("\n", " ")
    names = sorted(m["name"] for m in rehost(vault, "machines", "--json").json())
    assert names == ["app-vm-b1", "app-vm-b2"]
    v = Vault.open(vault)  # where a recovery plan reads the vApp's order: the source's settings
    try:
        starts = {n: inventory.spec_of(inventory.get_machine(v, n)).settings["startup"] for n in names}
    finally:
        v.close()
    assert starts["app-vm-b2"] == {"vapp": "vApp-BootOrder", "order": [1], "start_delay": 22,
                                   "stop_delay": 62, "start_action": "powerOn", "stop_action": "suspend"}
    assert (starts["app-vm-b1"]["order"], starts["app-vm-b1"]["start_delay"]) == ([2], 42)
    for name, master in (("app-vm-b1", m1), ("app-vm-b2", m2)):
        rehost(vault, "replicate", name)
        assert exported_equal(vault, name, master, tmp_path)


def test_a_vapp_becomes_a_plan_in_its_startup_order(tmp_path: Path, vault: Path) -> None:
    """vApp-BootOrder starts vm-b2 (order 1) before vm-b1 (order 2): the plan's groups."""
    _, d1 = disk(tmp_path, "d1.vmdk", 1)
    _, d2 = disk(tmp_path, "d2.vmdk", 2)
    ova = real_ova(tmp_path / "vApp-BootOrder.ova", "vApp-BootOrder.ovf",
                   {"vApp-BootOrder-disk1.vmdk": d1, "vApp-BootOrder-disk2.vmdk": d2})
    r = rehost(vault, "source", "add-image", "app", str(ova), "--plan", "app", "--vm", "vm-b1", check=False)
    assert r.code == 2 and "not with --vm" in r.err
    said = rehost(vault, "source", "add-image", "app", str(ova), "--plan", "app").out
    assert "created plan app: group 1: app-vm-b2; group 2: app-vm-b1" in said
    shown = rehost(vault, "plan", "show", "app", "--json").json()
    assert [g["machines"] for g in shown["groups"]] == [["app-vm-b2"], ["app-vm-b1"]]
    r = rehost(vault, "source", "add-image", "again", str(ova), "--plan", "app", check=False)
    assert r.code != 0 and "a plan named 'app' already exists" in r.err
    assert len(rehost(vault, "machines", "--json").json()) == 2  # refused before registering
    single = tmp_path / "single.raw"
    single.write_bytes(b"\0" * MiB)
    r = rehost(vault, "source", "add-image", "one", str(single), "--plan", "one", check=False)
    assert r.code == 2 and "is not a vApp" in r.err


def test_vapp_one_vm_by_choice(tmp_path: Path, vault: Path) -> None:
    _, d1 = disk(tmp_path, "d1.vmdk", 1)
    m2, d2 = disk(tmp_path, "d2.vmdk", 2)
    ova = real_ova(tmp_path / "multi.ova", "MultiVmVapps.ovf",
                   {"MultiVmVapps-disk1.vmdk": d1, "MultiVmVapps-disk2.vmdk": d2})
    rehost(vault, "source", "add-image", "-", str(ova), "--vm", "testVm2")
    [m] = rehost(vault, "machines", "--json").json()
    assert m["name"] == "testVm2"
    rehost(vault, "replicate", "testVm2")
    assert exported_equal(vault, "testVm2", m2, tmp_path)


@pytest.mark.parametrize("bare", [False, True], ids=["ova", "ovf-folder"])
def test_gzip_compressed_disk(tmp_path: Path, vault: Path, bare: bool) -> None:
    """vCenter's comp002.ovf names ``comp002-disk1.vmdk.gz`` with ovf:compression="gzip"."""
    master, data = disk(tmp_path, "d.vmdk", 3)
    packed = gzip.compress(data, compresslevel=1)
    if bare:
        folder = tmp_path / "export"
        folder.mkdir()
        (folder / "comp002-disk1.vmdk.gz").write_bytes(packed)
        path = folder / "comp002.ovf"
        path.write_bytes((REAL / "comp002.ovf").read_bytes())
    else:
        path = real_ova(tmp_path / "comp002.ova", "comp002.ovf", {"comp002-disk1.vmdk.gz": packed})
    said = rehost(vault, "source", "add-image", "-", str(path)).out
    assert "registered comp001: 1 disk(s), vmdk+gz 16.0 MiB" in said
    assert "disk 0 (comp002-disk1.vmdk.gz, vmdk+gz) unpacked into the cache" in said  # at once
    first = rehost(vault, "replicate", "comp001", "--json").json()
    assert not any("unpacked" in n for n in first["notes"])  # the cycle reuses it
    assert exported_equal(vault, "comp001", master, tmp_path)
    assert len(list((vault / "cache" / "images").iterdir())) == 1

    # a re-export (same content, new file): unpacked again by the cycle, the old copy dropped
    if bare:
        (path.parent / "comp002-disk1.vmdk.gz").unlink()
        (path.parent / "comp002-disk1.vmdk.gz").write_bytes(packed)
    else:
        path.unlink()
        real_ova(path, "comp002.ovf", {"comp002-disk1.vmdk.gz": packed})
    again = rehost(vault, "replicate", "comp001", "--json").json()
    assert any("unpacked into the cache" in n for n in again["notes"])
    assert again["changed_bytes"] == 0
    assert len(list((vault / "cache" / "images").iterdir())) == 1

    # replication ends (what `complete` asks of the source): the unpacked copy goes
    from rehost.vault.inventory import get_machine, provider_for, spec_of
    from rehost.vault.vault import Vault

    v = Vault.open(vault)
    try:
        machine = get_machine(v, "comp001")
        note = provider_for(machine, v).stop_tracking(spec_of(machine))
    finally:
        v.close()
    assert note == "1 unpacked export disk(s) removed from the cache"
    assert list((vault / "cache" / "images").iterdir()) == []


def test_chunked_disk(tmp_path: Path, vault: Path) -> None:
    """vCenter's nostalgia-chunkdisk.ovf: ``Nostalgia-disk1.vmdk`` split into chunks."""
    master, data = disk(tmp_path, "d.vmdk", 4)
    third = -(-len(data) // 3)
    chunks = {f"Nostalgia-disk1.vmdk.{i:09d}": data[i * third:(i + 1) * third] for i in range(3)}
    ova = real_ova(tmp_path / "Nostalgia.ova", "nostalgia-chunkdisk.ovf", chunks)
    said = rehost(vault, "source", "add-image", "old", str(ova)).out
    assert "vmdk+chunks 16.0 MiB" in said and "64 MiB" in said
    rehost(vault, "replicate", "old")
    assert exported_equal(vault, "old", master, tmp_path)


def test_chunked_and_compressed_members_read_in_order(tmp_path: Path, vault: Path) -> None:
    """ovftool --compress with a chunk size: the gzip stream is split, not each chunk; the
    tar lists the chunks out of order."""
    master, data = disk(tmp_path, "d.vmdk", 5)
    packed = gzip.compress(data)
    half = len(packed) // 2
    text = (REAL / "comp002.ovf").read_text().replace(
        'ovf:compression="gzip"', f'ovf:compression="gzip" ovf:chunkSize="{half}"')
    members = {"comp002-disk1.vmdk.gz.000000001": packed[half:],
               "comp002-disk1.vmdk.gz.000000000": packed[:half]}
    ova = tmp_path / "both.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in [("both.ovf", text.encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    rehost(vault, "source", "add-image", "both", str(ova))
    rehost(vault, "replicate", "both")
    assert exported_equal(vault, "both", master, tmp_path)


def test_blank_disk_is_created_empty(tmp_path: Path, vault: Path) -> None:
    """govmomi's disk-no-file.ovf: a 256 MiB disk with no file at all."""
    path = tmp_path / "blank.ovf"
    path.write_bytes((REAL / "disk-no-file.ovf").read_bytes())
    said = rehost(vault, "source", "add-image", "blank", str(path)).out
    assert "zero 256.0 MiB" in said
    r = rehost(vault, "replicate", "blank", "--json").json()
    assert r["bytes_read"] == 0
    zeros = tmp_path / "zeros.raw"
    with open(zeros, "wb") as f:
        f.truncate(256 * MiB)
    assert exported_equal(vault, "blank", zeros, tmp_path)


def test_reexported_ova_that_grew_then_lost_a_disk(tmp_path: Path, vault: Path) -> None:
    """The ENOTCONN bug: a re-export at the same path moves the members. Each cycle reads the
    OVA again: a bigger disk is replicated at its new size (and said), a lost disk is an error
    that names it."""
    m1, d1 = disk(tmp_path, "a.vmdk", 6)
    m2, d2 = disk(tmp_path, "b.vmdk", 7)
    ova = tmp_path / "web01.ova"
    build_ova(ova, vmware_ovf("web01", [("web01-disk1.vmdk", 1), ("web01-disk2.vmdk", 1)]),
              {"web01-disk1.vmdk": d1, "web01-disk2.vmdk": d2})
    rehost(vault, "source", "add-image", "-", str(ova))
    rehost(vault, "replicate", "web01")

    g1, big = disk(tmp_path, "a2.vmdk", 8, size=24 * MiB)  # disk 1 grew; members move
    ova.unlink()
    build_ova(ova, vmware_ovf("web01", [("web01-disk1.vmdk", 1), ("web01-disk2.vmdk", 1)]),
              {"web01-disk2.vmdk": d2, "web01-disk1.vmdk": big})
    r = rehost(vault, "replicate", "web01", "--json").json()
    # vmware_ovf lists the drives in reverse: disk 0 is web01-disk2.vmdk, disk 1 web01-disk1.vmdk
    [note] = [n for n in r["notes"] if "grew" in n]
    assert f"disk 1 (web01-disk1.vmdk) grew from {SIZE} to {24 * MiB} bytes" in note
    assert exported_equal(vault, "web01", g1, tmp_path, 1)
    assert exported_equal(vault, "web01", m2, tmp_path, 0)
    assert not exported_equal(vault, "web01", m1, tmp_path, 1)

    ova.unlink()
    build_ova(ova, vmware_ovf("web01", [("web01-disk1.vmdk", 1)]), {"web01-disk1.vmdk": big})
    r2 = rehost(vault, "replicate", "web01", check=False)
    assert r2.code != 0
    assert ("changed shape: VM 'web01' now has 1 disk(s), web01 was registered with 2; missing: "
            "disk 0 (vmdisk2)") in " ".join(r2.err.split())
    assert "ENOTCONN" not in r2.err


def test_vmx_folder(tmp_path: Path, vault: Path) -> None:
    """libvirt's esx-in-the-wild-17.vmx (ESXi 8): two disks, one in a subfolder; the ISO on
    another datastore is no disk. The VMDKs are qemu-img's, under the names the .vmx gives."""
    folder = tmp_path / "vm"
    (folder / "subfolder").mkdir(parents=True)
    vmx = folder / "esx8.vmx"
    vmx.write_bytes((REAL.parent / "vmx" / "esx-in-the-wild-17.vmx").read_bytes())
    masters = []
    for i, name in enumerate(["esx8.0-win11-with-second-disk-in-subfolder.vmdk",
                              "subfolder/esx8.0-win11-with-second-disk-in-subfolder_1.vmdk"]):
        master = tmp_path / f"m{i}.raw"
        make_master(master, SIZE, seed=10 + i)
        make_image(master, "vmdk", folder / name)  # a monolithic sparse VMDK, as Workstation
        masters.append(master)
    said = rehost(vault, "source", "add-image", "-", str(vmx)).out
    assert "registered esx8.0-win11-with-second-disk-in-subfolder: 2 disk(s)" in said
    assert "2 CPU(s), 4096 MiB, 1 NIC(s), windows2019srvNext-64" in said
    [m] = rehost(vault, "machines", "--json").json()
    rehost(vault, "replicate", m["name"])
    for i, master in enumerate(masters):
        assert exported_equal(vault, m["name"], master, tmp_path, i)


def test_vmx_disk_outside_the_folder_is_refused(tmp_path: Path, vault: Path) -> None:
    vmx = tmp_path / "evil.vmx"
    vmx.write_text('.encoding = "UTF-8"\ndisplayName = "evil"\nscsi0:0.fileName = "../../etc/x.vmdk"\n')
    r = rehost(vault, "source", "add-image", "-", str(vmx), check=False)
    assert r.code != 0 and "outside the VM's folder" in r.err
    assert json.loads(rehost(vault, "machines", "--json").out) == []
