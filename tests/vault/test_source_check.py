"""A source that maps its VM networks (Hyper-V managed by VMM): the map is kept with the
source, shown by ``rehost source verify``, changed by ``map-networks``, and a failover of its
machine is refused while one of its networks is unmapped. Other sources keep today's default.

The Hyper-V host and VMM are the documented-shape stand-ins of ``tests/sources/test_hyperv_live``
(no Windows here); the failover runs on an image source whose settings carry the same map, so
the refusal and the network chosen are those of a real job on the memory target.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rehost.cli.main import full_app
from rehost.errors import InvalidState, UsageError
from rehost.jobs.runner import run_job
from rehost.sources import hyperv
from rehost.vault import cycles, failover, inventory, targets
from rehost.vault.models import MachineRow, SourceRow
from rehost.vault.source_check import map_networks, verify_source
from rehost.vault.vault import Vault
from tests.sources.test_hyperv_live import FakeRunner, host, sample
from tests.targets.helpers import make_disk


def _hyperv_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> Vault:
    vmm = FakeRunner({"Get-SCVirtualMachine": sample("vmm_adapters.json")})
    monkeypatch.setattr(hyperv, "connect", lambda h, u, ssl: vmm if h == "vmm01" else host())
    vault = Vault.init(tmp_path / "vault")
    inventory.add_source(vault, "hyperv", "web01", {"host": "hv01", "user": "u", **options})
    return vault


def test_a_vmm_source_keeps_its_map_and_verify_shows_what_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = _hyperv_vault(tmp_path, monkeypatch, vmm="vmm01", network_map=["Prod-Web=production"])
    report = verify_source(vault, "web01")
    assert report.kind == "hyperv" and report.maps_networks
    assert report.network_map == {"Prod-Web": "production"}
    assert [(n.network, n.target_network) for n in report.networks] == [("Prod-Web", "production"),
                                                                        ("default", None)]
    assert not report.ok and [n.network for n in report.unmapped] == ["default"]
    # the CLI says the same, exits 1 and names the command that fixes it
    res = CliRunner().invoke(full_app(), ["--vault", str(vault.root), "source", "verify", "web01"])
    assert res.exit_code == 1, res.output
    assert "Prod-Web -> production" in res.output and "default -> NOT MAPPED" in res.output
    assert "rehost source map-networks web01 default=TARGETNET" in " ".join(res.output.split())
    assert "u" in res.output and "password" not in res.output.lower()  # no secret is stored to show
    res = CliRunner().invoke(full_app(), ["--vault", str(vault.root), "source", "map-networks", "web01",
                                   "default=isolated", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["network_map"] == {"Prod-Web": "production", "default": "isolated"}
    assert verify_source(vault, "web01").ok


def test_without_vmm_a_hyperv_source_keeps_the_default(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    vault = _hyperv_vault(tmp_path, monkeypatch)
    report = verify_source(vault, "web01")
    assert not report.maps_networks and report.ok
    assert [(n.network, n.target_network) for n in report.networks] == [("External-LAN", None),
                                                                        ("default", None)]
    with pytest.raises(UsageError, match="keeps no network map of its own"):
        map_networks(vault, "web01", {"External-LAN": "production"})


def test_bad_pairs_and_unknown_sources_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="VMNETWORK=TARGETNET, not 'Prod-Web'"):
        hyperv.HypervConfig(host="hv01", user="u", vmm="vmm01", network_map=("Prod-Web",))
    vault = _hyperv_vault(tmp_path, monkeypatch, vmm="vmm01")
    with pytest.raises(UsageError, match="SOURCE=TARGET"):
        targets.parse_network_map(["=production"])  # what map-networks parses its pairs with
    with pytest.raises(Exception, match="no source named 'nope'"):
        verify_source(vault, "nope")


def _mapped_image_vault(tmp_path: Path) -> Vault:
    """An image machine with two NICs whose source keeps a map naming one of them: what a
    VMM-managed source looks like to failover (its cycles run like any image's)."""
    vault = Vault.init(tmp_path / "vault")
    inventory.add_image_source(vault, "web", [make_disk(tmp_path / "web.img", "first")])
    row = targets.add_target(vault, "memory", "t", {"path": tmp_path / "target"})
    targets.assign(vault, inventory.get_machine(vault, "web"), row, {})  # replicate --target t
    with vault.session() as s, s.begin():
        m = s.query(MachineRow).filter_by(name="web").one()
        m.spec = {**m.spec, "nics": [{"mac": "00:15:5d:01:02:03", "network": "Prod-Web"},
                                     {"mac": "00:15:5d:01:02:a4", "network": "Backup"}]}
        src = s.query(SourceRow).filter_by(name="web").one()
        src.settings = {**src.settings, "network_map": {"Prod-Web": "production"}}
    run_job(vault, cycles.start_replicate_job(vault, "web").id)
    return vault


def test_failover_is_refused_until_every_network_is_mapped(tmp_path: Path) -> None:
    vault = _mapped_image_vault(tmp_path)
    try:
        with pytest.raises(InvalidState, match=r"Backup is not mapped; map them with rehost source "
                                               r"map-networks web Backup=TARGETNET"):
            failover.start_job(vault, "failover", "web", target="t")
        # a test failover goes to the isolated network: the map is not needed there
        test = run_job(vault, failover.start_job(vault, "test-failover", "web", target="t").id)
        assert test.state == "succeeded", [s.detail for s in test.steps]
        run_job(vault, failover.start_job(vault, "test-cleanup", "web").id)
        with pytest.raises(UsageError, match="target network 'nowhere' does not exist"):
            map_networks(vault, "web", {"Backup": "nowhere"})  # the machine's target has no such network
        map_networks(vault, "web", {"Backup": "production"})
        done = run_job(vault, failover.start_job(vault, "failover", "web", target="t").id)
        assert done.state == "succeeded", [s.detail for s in done.steps]
        start = next(s for s in done.steps if s.name == "start")
        assert "on the production network" in start.detail
    finally:
        vault.close()


def test_other_sources_keep_the_default(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        inventory.add_image_source(vault, "web", [make_disk(tmp_path / "web.img", "first")])
        m = inventory.get_machine(vault, "web")
        assert targets.unmapped_networks(m) == [] and targets.source_network_map(m) is None
        assert verify_source(vault, "web").ok
    finally:
        vault.close()
