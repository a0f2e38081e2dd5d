"""The live Hyper-V source (``rehost.sources.hyperv``, ``hyperv_ps``) without a Hyper-V host.

Nothing here talks to Windows: the scripts are checked as text (quoting, injection, the
documented calls), the parsers and discovery run on JSON samples written by hand in the
shape of Microsoft's documented output (``fixtures/hyperv/*.json``, each saying which page
its shape comes from), and the pypsrp client is a stand-in module. So these tests prove the
pieces fit one another, not that a real host answers as documented.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rehost.disks.extent import Extent
from rehost.errors import UsageError
from rehost.sources import hyperv, registry
from rehost.sources import hyperv_ps as ps
from rehost.sources.hyperv_ps import HypervError
from rehost.spec import Firmware

FIXTURES = Path(__file__).parent / "fixtures" / "hyperv"
VM_ID = "6b4c2a1e-93f0-4e5b-a1d2-0c3e5f7a9b11"
EVIL = "x'; Remove-Item C:\\ -Recurse #"
SECRET = "s3cret-Pa55-never-shown"


def sample(name: str) -> str:
    """What the script would print: the sample's ``output`` as compact JSON."""
    return json.dumps(json.loads((FIXTURES / name).read_text())["output"])


class FakeRunner:
    """A PsRunner that answers each script by the call it makes, and remembers the scripts."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.scripts: list[str] = []

    def run(self, script: str) -> str:
        self.scripts.append(script)
        for marker, answer in self.answers.items():
            if marker in script:
                return answer
        raise AssertionError(f"no answer for script:\n{script}")


def code_outside_strings(script: str) -> str:
    """The script with every single-quoted string removed, read as PowerShell's tokenizer
    does (any of the five single quotes opens and closes; a doubled one is a quote inside)."""
    quotes = "'\u2018\u2019\u201a\u201b"
    out, i, inside = [], 0, False
    while i < len(script):
        c = script[i]
        if c in quotes:
            if inside and i + 1 < len(script) and script[i + 1] in quotes:
                i += 2
                continue
            inside = not inside
        elif not inside:
            out.append(c)
        i += 1
    assert not inside, "a string is left open"
    return "".join(out)


# -- quoting -----------------------------------------------------------------------------------


def test_quote_doubles_single_quotes_and_typographic_ones() -> None:
    assert ps.quote("web01") == "'web01'"
    assert ps.quote("it's") == "'it''s'"
    assert ps.quote("a\u2019b") == "'a\u2019\u2019b'"
    assert ps.quote("$env:PATH `n") == "'$env:PATH `n'"  # nothing expands in single quotes
    with pytest.raises(HypervError, match="NUL"):
        ps.quote("a\0b")


@pytest.mark.parametrize("name", [EVIL, "x\u2019; Remove-Item C:\\ -Recurse #", "x''; Remove-Item C:\\ #"])
def test_a_hostile_vm_name_stays_a_string(name: str) -> None:
    for script in (ps.inventory_script(name), ps.vmm_networks_script("vmm01", name),
                   ps.vmm_networks_script(name, "web01")):
        assert "Remove-Item" in script
        assert "Remove-Item" not in code_outside_strings(script)


def test_the_vm_name_is_compared_not_used_as_a_wildcard() -> None:
    script = ps.inventory_script("web*")
    assert "$vms = @(Get-VM | Where-Object { $_.Name -eq 'web*' })" in script
    assert "-Name" not in script
    assert "Where-Object" not in ps.inventory_script(None)


def test_ids_must_be_guids() -> None:
    assert ps.guid(VM_ID.upper()) == VM_ID
    for script in (lambda v: ps.stop_vm_script(v, 60, False),
                   lambda v: ps.create_recovery_snapshot_script(v, False)):
        with pytest.raises(HypervError, match="not a Hyper-V id"):
            script(EVIL)


# -- the scripts' documented calls --------------------------------------------------------------


def test_every_script_prints_compact_json_of_an_array() -> None:
    scripts = [ps.inventory_script("web01"), ps.vmm_networks_script("vmm01", "web01"),
               ps.create_recovery_snapshot_script(VM_ID, True),
               ps.disk_changes_script(["C:\\a.vhdx"], ["r"], [1]),
               ps.convert_to_reference_point_script("p"), ps.destroy_snapshot_script("p"),
               ps.destroy_reference_point_script("p"), ps.stop_vm_script(VM_ID, 5, False),
               ps.export_snapshot_script(VM_ID, "Microsoft:" + VM_ID, "\\\\nas\\rehost\\c1")]
    for script in scripts:
        assert script.startswith("$ErrorActionPreference = 'Stop'\n")
        assert script.rstrip().splitlines()[-1].startswith("ConvertTo-Json -Depth 4 -Compress -InputObject ")


def test_recovery_snapshot_script() -> None:
    crash = ps.create_recovery_snapshot_script(VM_ID, False)
    assert "-Class Msvm_VirtualSystemSnapshotService" in crash
    setting = "'\\\\.\\root\\virtualization\\v2:Msvm_VirtualSystemSnapshotSettingData'"
    assert f"$sd = ([wmiclass]{setting}).CreateInstance()" in crash
    assert "$r = $svc.CreateSnapshot($vm, $sd.GetText(2), 32768, $null)" in crash
    assert "$sd.ConsistencyLevel = 2" in crash
    assert f"Where-Object {{ $_.Name -eq '{VM_ID}' }}" in crash
    assert "$sd.ConsistencyLevel = 1" in ps.create_recovery_snapshot_script(VM_ID, True)


def test_disk_changes_script_asks_each_disk_until_processed() -> None:
    script = ps.disk_changes_script(["C:\\VMs\\it's.vhdx", "D:\\d.vhdx"], ["rctX:1", "rctX:2"], [1024, 2048])
    assert "$path = 'C:\\VMs\\it''s.vhdx';" in script and "$size = [uint64]1024" in script
    assert "$r = $ims.GetVirtualDiskChanges($path, 'rctX:1', $null, $at, $size - $at)" in script
    assert "$r = $ims.GetVirtualDiskChanges($path, 'rctX:2', $null, $at, $size - $at)" in script
    assert "$at += $r.ProcessedByteLength" in script
    with pytest.raises(HypervError, match="each disk"):
        ps.disk_changes_script(["a"], [], [1])


def test_reference_point_and_cleanup_scripts() -> None:
    path = 'HV01\\root\\virtualization\\v2:Msvm_VirtualSystemSnapshotSettingData.InstanceID="Microsoft:x"'
    script = ps.convert_to_reference_point_script(path)
    assert f"$svc.ConvertToReferencePoint([wmi]'{path}', $null, $null)" in script
    assert f"$svc.DestroySnapshot([wmi]'{path}')" in ps.destroy_snapshot_script(path)
    script = ps.destroy_reference_point_script("rp'x")
    assert "Msvm_VirtualSystemReferencePointService" in script
    assert "DestroyReferencePoint([wmi]'rp''x')" in script


def test_stop_vm_waits_and_forces_only_when_asked() -> None:
    gentle = ps.stop_vm_script(VM_ID, 120, False)
    assert "$job = Stop-VM -VM $vm -AsJob" in gentle and "-Force" not in gentle and "-TurnOff" not in gentle
    assert "Wait-Job -Job $job -Timeout 120" in gentle
    assert "$job = Stop-VM -VM $vm -Force -AsJob" in ps.stop_vm_script(VM_ID, 120, True)


def test_vmm_script() -> None:
    script = ps.vmm_networks_script("vmm01.corp", "web01")
    assert "Import-Module VirtualMachineManager" in script
    assert "Get-SCVirtualMachine -VMMServer 'vmm01.corp' | Where-Object { $_.Name -eq 'web01' }" in script
    assert "Get-SCVirtualNetworkAdapter -VM $_" in script and "$_.VMNetwork.Name" in script


# -- parsers -----------------------------------------------------------------------------------


def test_inventory_parses_disks_and_nics() -> None:
    [vm] = ps.parse_inventory(sample("get_vm.json"))
    assert (vm.name, vm.id, vm.generation, vm.cpus, vm.memory_bytes) == ("web01", VM_ID, 2, 4, 4 << 30)
    assert [(d.size, d.controller, d.vhd_type) for d in vm.disks] == [
        (136365211648, "scsi", "Differencing"), (10737418240, "scsi", "Dynamic")]
    assert vm.disks[0].parent_path and vm.disks[0].parent_path.endswith("web01-os.vhdx")
    assert vm.disks[1].parent_path is None
    assert [(n.mac, n.switch, n.addresses) for n in vm.nics] == [
        ("00:15:5d:01:02:03", "External-LAN", ("10.0.0.5", "fe80::215:5dff:fe01:203")),
        ("00:15:5d:01:02:a4", None, ())]


def test_inventory_takes_single_objects_for_lists() -> None:
    legacy = next(v for v in ps.parse_inventory(sample("get_vm_all.json")) if v.name == "legacy01")
    assert [d.path for d in legacy.disks] == ["D:\\VMs\\legacy01.vhd"] and legacy.disks[0].parent_path is None
    assert [n.mac for n in legacy.nics] == ["00:15:5d:0a:0b:0c"]
    [alone] = ps.parse_inventory(json.dumps(json.loads(sample("get_vm.json"))[0]))
    assert alone.name == "web01"
    assert ps.parse_inventory("") == []


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ('[{"Name": "a", "Id": "x"}]', "not a Hyper-V id"),
    ('[{"Name": "a", "Id": "6b4c2a1e-93f0-4e5b-a1d2-0c3e5f7a9b11", "Generation": true}]', "Generation"),
    ('[{"Name": "a", "Id": "6b4c2a1e-93f0-4e5b-a1d2-0c3e5f7a9b11", "Generation": 2, "ProcessorCount": 1,'
     ' "MemoryStartup": 1, "Disks": [{"Path": "p"}]}]', "Size"),
    ('[1, 2]', "list of objects"),
])
def test_inventory_refuses_output_of_another_shape(text: str, message: str) -> None:
    with pytest.raises(HypervError, match=message):
        ps.parse_inventory(text)


def test_mac_addresses() -> None:
    assert ps.mac_address("00155D010203") == ps.mac_address("00:15:5D:01:02:03") == "00:15:5d:01:02:03"
    with pytest.raises(HypervError):
        ps.mac_address("00155D01020")


def test_cycle_outputs_parse() -> None:
    snap = ps.parse_recovery_snapshot(sample("recovery_snapshot.json"))
    assert snap.instance_id == "Microsoft:5D1C7A2B-3E4F-4A5B-8C6D-7E8F9A0B1C2D" and len(snap.disks) == 2
    point = ps.parse_reference_point(sample("reference_point.json"))
    assert point.path.endswith('"Microsoft:9A8B7C6D-5E4F-4321-9876-FEDCBA012345"') and len(point.rct_ids) == 2
    assert ps.parse_state(sample("stop_vm.json")) == "Off"
    with pytest.raises(HypervError, match="one snapshot"):
        ps.parse_recovery_snapshot("[]")


# -- changed ranges into extents -------------------------------------------------------------


def test_changed_ranges_are_ordered_and_merged() -> None:
    os_disk, data = ps.parse_disk_changes(sample("disk_changes.json"))
    # 0+64K alone; 1M+1M, 1.5M+1M (overlap) and 2M+1M (inside the merge) become 1M..3M; 4M+0 dropped
    assert ps.changed_extents(os_disk, 136365211648) == [Extent(0, 65536), Extent(1 << 20, 2 << 20)]
    assert ps.changed_extents(data, 10737418240) == []


def test_touching_ranges_merge() -> None:
    changes = ps.DiskChanges("d", (4096, 0), (4096, 4096))
    assert ps.changed_extents(changes, 8192) == [Extent(0, 8192)]


@pytest.mark.parametrize(("offsets", "lengths", "message"), [
    ((8192,), (4096,), "outside the disk"),
    ((4096,), (8192,), "outside the disk"),
    ((-1,), (10,), "outside the disk"),
    ((0, 10), (5,), "2 changed offsets but 1 lengths"),
])
def test_a_range_past_the_disk_is_refused(offsets: tuple[int, ...], lengths: tuple[int, ...],
                                          message: str) -> None:
    with pytest.raises(HypervError, match=message):
        ps.changed_extents(ps.DiskChanges("d", offsets, lengths), 10240)
    assert ps.changed_extents(ps.DiskChanges("d", (8192,), (2048,)), 10240) == [Extent(8192, 2048)]


def test_changes_must_be_whole_numbers() -> None:
    with pytest.raises(HypervError, match="whole numbers"):
        ps.parse_disk_changes('[{"Path": "d", "Offsets": ["1"], "Lengths": [1]}]')


# -- discovery -------------------------------------------------------------------------------


def host(**more: str) -> FakeRunner:
    return FakeRunner({"Get-VM | Where-Object": sample("get_vm.json"), **more})


def test_discovery_makes_a_machine_spec() -> None:
    runner = host()
    spec = hyperv.discover_with("web", hyperv.HypervConfig(host="hv01", user="CORP\\rehost", vm="web01"),
                                runner, None)
    assert spec.name == "web" and spec.firmware is Firmware.UEFI
    assert (spec.cpus, spec.memory_mib) == (4, 4096)
    assert [(d.index, d.size, d.format, d.controller) for d in spec.disks] == [
        (0, 136365211648, "hyperv", "scsi"), (1, 10737418240, "hyperv", "scsi")]
    assert spec.disks[1].ref == "D:\\VMs\\web01-data.vhdx"
    assert [(n.mac, n.network) for n in spec.nics] == [("00:15:5d:01:02:03", "External-LAN"),
                                                        ("00:15:5d:01:02:a4", "default")]
    assert spec.nics[0].addresses == ("10.0.0.5", "fe80::215:5dff:fe01:203")
    assert spec.settings["vm_id"] == VM_ID and spec.settings["vmm"] is None
    assert runner.scripts == [ps.inventory_script("web01")]


def test_vmm_names_the_networks() -> None:
    vmm = FakeRunner({"Get-SCVirtualMachine": sample("vmm_adapters.json")})
    config = hyperv.HypervConfig(host="hv01", user="u", vmm="vmm01")
    spec = hyperv.discover_with("web01", config, host(), vmm)
    # the first NIC is on VMM's VM network Prod-Web; the second on none: it keeps its (empty) switch
    assert [n.network for n in spec.nics] == ["Prod-Web", "default"]
    assert vmm.scripts == [ps.vmm_networks_script("vmm01", "web01")]
    assert spec.settings["vmm"] == "vmm01"


def test_generation_1_is_bios() -> None:
    runner = FakeRunner({"Get-VM | Where-Object": json.dumps([json.loads(sample("get_vm_all.json"))[1]])})
    spec = hyperv.discover_with("legacy01", hyperv.HypervConfig(host="h", user="u"), runner, None)
    assert spec.firmware is Firmware.BIOS and spec.disks[0].controller == "ide"
    assert spec.nics[0].network == "Internal"
    with pytest.raises(HypervError, match="generations 1 and 2"):
        ps.firmware(3)


def test_an_unknown_vm_is_refused_with_the_inventory() -> None:
    runner = FakeRunner({"Where-Object": "[]", "Get-VM": sample("get_vm_all.json")})
    with pytest.raises(UsageError, match=r"no VM named 'db01' on hv01 \(VMs: legacy01, web01\)"):
        hyperv.discover_with("db01", hyperv.HypervConfig(host="hv01", user="u"), runner, None)


def test_config_refuses_half_a_share() -> None:
    with pytest.raises(UsageError, match="--share and --share-mount together"):
        hyperv.HypervConfig(host="h", user="u", share="\\\\nas\\rehost")
    with pytest.raises(UsageError, match="host and user"):
        hyperv.HypervConfig(host=" ", user="u")


def test_the_kind_is_registered_with_its_label() -> None:
    plugin = registry.get("hyperv")
    assert plugin.capabilities.change_tracking == "hyperv-rct" and plugin.capabilities.can_shutdown
    assert "untested against a real host" in plugin.summary
    assert "untested against a real host" in (hyperv.__doc__ or "") and "untested" in (ps.__doc__ or "")
    assert {o.name for o in registry.options(hyperv.HypervConfig)} >= {"host", "user", "vm", "vmm"}


# -- a cycle and a failover against the fake host ------------------------------------------------


def machine(tmp_path: Path | None = None) -> Any:
    settings: dict[str, Any] = {"share": "\\\\nas\\rehost", "share_mount": str(tmp_path)} if tmp_path else {}
    config = hyperv.HypervConfig(host="hv01", user="u", vm="web01", **settings)
    return hyperv.discover_with("web01", config, host(), None)


def cycle_host() -> FakeRunner:
    return FakeRunner({"CreateSnapshot": sample("recovery_snapshot.json"),
                       "GetVirtualDiskChanges": sample("disk_changes.json"),
                       "Export-VMSnapshot": "[]", "DestroySnapshot": "[]"})


def test_a_cycle_without_a_share_says_so_before_touching_the_host() -> None:
    spec = machine()
    runner = cycle_host()
    source = hyperv.HypervSource(spec.settings, lambda h, u, s: runner)
    with pytest.raises(HypervError, match=r"--share and --share-mount.*untested against a real host"), \
            source.snapshot(spec, None):
        pass
    assert runner.scripts == []


def test_a_failed_cycle_destroys_its_recovery_snapshot(tmp_path: Path) -> None:
    spec = machine(tmp_path)
    runner = cycle_host()
    source = hyperv.HypervSource(spec.settings, lambda h, u, s: runner)
    with pytest.raises(HypervError, match="export is not at"), source.snapshot(spec, None):
        pass
    calls = [next(m for m in ("CreateSnapshot", "Export-VMSnapshot", "DestroySnapshot") if m in s)
             for s in runner.scripts]
    assert calls == ["CreateSnapshot", "Export-VMSnapshot", "DestroySnapshot"]
    assert "'\\\\nas\\rehost\\rehost-vm-" in runner.scripts[1]


def test_rct_changes_since_the_parent_point(tmp_path: Path) -> None:
    spec = machine(tmp_path)
    runner = cycle_host()
    snap = ps.parse_recovery_snapshot(sample("recovery_snapshot.json"))
    parent: Any = SimpleNamespace(source={"rct_ids": ["rctX:a", "rctX:b"]})
    notes: list[str] = []
    changed = hyperv.HypervSource._changed(runner, spec, snap, parent, notes)
    assert changed == {0: [Extent(0, 65536), Extent(1 << 20, 2 << 20)], 1: []} and notes == []
    assert "'rctX:a'" in runner.scripts[0] and "'rctX:b'" in runner.scripts[0]
    # a parent without RCT ids (or a disk more): every disk is hash-diffed, and the notes say why
    bare: Any = SimpleNamespace(source={})
    assert hyperv.HypervSource._changed(runner, spec, snap, bare, notes) == {0: None, 1: None}
    assert "hash-diff" in notes[0]
    assert hyperv.HypervSource._changed(runner, spec, snap, None, []) == {0: None, 1: None}


def test_shutdown(tmp_path: Path) -> None:
    spec = machine()
    runner = FakeRunner({"Stop-VM": sample("stop_vm.json")})
    source = hyperv.HypervSource(spec.settings, lambda h, u, s: runner)
    assert source.shutdown(spec, 30) == "guest web01 shut down (Stop-VM)"
    assert "-Force" not in runner.scripts[0]
    still = FakeRunner({"Stop-VM": '[{"State": "Running"}]'})
    with pytest.raises(HypervError, match="still Running after 30 s; register the source with --force-shut"):
        hyperv.HypervSource(spec.settings, lambda h, u, s: still).shutdown(spec, 30)


# -- pypsrp and the password ------------------------------------------------------------------


def test_without_pypsrp_the_error_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypsrp", None)
    monkeypatch.setitem(sys.modules, "pypsrp.client", None)
    with pytest.raises(UsageError, match="pip install pypsrp"):
        hyperv.PypsrpRunner("hv01", "u", SECRET)


@pytest.fixture
def fake_pypsrp(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A stand-in ``pypsrp.client`` whose Client records how it was made and answers from the
    samples; returns the clients made."""
    made: list[Any] = []

    class Client:
        def __init__(self, server: str, **kwargs: Any) -> None:
            self.server, self.kwargs = server, kwargs
            self.fail = False
            made.append(self)

        def execute_ps(self, script: str) -> tuple[str, Any, bool]:
            if self.fail:
                return "", SimpleNamespace(error=["Get-VM : access denied"]), True
            return sample("get_vm.json"), SimpleNamespace(error=[]), False

    package, module = types.ModuleType("pypsrp"), types.ModuleType("pypsrp.client")
    module.Client = Client  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pypsrp", package)
    monkeypatch.setitem(sys.modules, "pypsrp.client", module)
    return made


def test_the_real_runner_uses_negotiate(fake_pypsrp: list[Any]) -> None:
    runner = hyperv.PypsrpRunner("hv01", "CORP\\u", SECRET, ssl=False)
    [client] = fake_pypsrp
    assert client.server == "hv01"
    assert client.kwargs == {"username": "CORP\\u", "password": SECRET, "ssl": False, "auth": "negotiate"}
    assert "web01" in runner.run("Get-VM")
    client.fail = True
    with pytest.raises(HypervError, match="PowerShell on hv01 failed: Get-VM : access denied") as e:
        runner.run("Get-VM")
    assert SECRET not in str(e.value)


def test_the_password_never_shows(fake_pypsrp: list[Any], monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(hyperv.PASSWORD_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    config = hyperv.HypervConfig(host="hv01", user="u", vm="web01")
    spec = hyperv.discover("web01", config)
    assert fake_pypsrp[0].kwargs["password"] == SECRET  # it did reach the client
    runner = hyperv.connect("hv01", "u", True)
    shown = [repr(runner), str(runner), repr(config), repr(spec), json.dumps(spec.settings), caplog.text]
    assert not any(SECRET in s for s in shown)
    assert repr(runner) == "PypsrpRunner(host='hv01', user='u')"


def test_an_exported_disk_of_another_size_is_refused(tmp_path: Path) -> None:
    """The export's files are matched to the machine's disks by base name; one whose virtual
    size is not its disk's is refused before anything is read (real VHDX files, no host)."""
    from contextlib import ExitStack

    from rehost.testkit.vhdx_chain import Layer, write_vhdx

    spec = machine(tmp_path)
    disks = tmp_path / "cycle" / "web01" / "Virtual Hard Disks"
    disks.mkdir(parents=True)
    write_vhdx(disks / "web01-data.vhdx", 1 << 20, Layer())
    with ExitStack() as stack, pytest.raises(HypervError, match="the export has 1 disk"):
        hyperv.HypervSource._open_exported(stack, spec, tmp_path / "cycle")
    write_vhdx(disks / "web01-os.vhdx", 1 << 20, Layer())
    with ExitStack() as stack, pytest.raises(HypervError, match="not the size of disk 0"):
        hyperv.HypervSource._open_exported(stack, spec, tmp_path / "cycle")
    with ExitStack() as stack, pytest.raises(HypervError, match="export is not at"):
        hyperv.HypervSource._open_exported(stack, spec, tmp_path / "elsewhere")
