"""``rehost source add KIND NAME [options]``: options from the kind's config, the old spellings
register the same machine, bad input is one line and leaves the vault as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import rehost


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    v = tmp_path / "vault"
    rehost(v, "init")
    return v


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "8M"], check=True)
    return path


def _machines(vault: Path) -> list[dict[str, object]]:
    machines = rehost(vault, "machines", "--json").json()
    for m in machines:
        m.pop("health")  # the clock moves; nothing else may
    return list(machines)


def test_add_image_equals_source_add_image(vault: Path, disk: Path) -> None:
    new = rehost(vault, "source", "add", "image", "a", str(disk))
    old = rehost(vault, "source", "add-image", "b", str(disk))
    assert new.out.replace("registered a", "") == old.out.replace("registered b", "")
    a, b = _machines(vault)
    assert {**a, "name": "b"} == b and a["source"] == "image" and a["disks"]
    assert a["spec"] == {"firmware": "bios", "cpus": 1, "memory_mib": 512, "nics": [], "guest_os": None}


def test_help_comes_from_the_config(vault: Path) -> None:
    text = rehost(vault, "source", "add", "qemu", "--help").out
    assert "--qmp-socket" in text and "--granularity" in text and "default 4096" in text
    assert "dirty-bitmap" in text  # the kind's capabilities
    kinds = rehost(vault, "source", "kinds", "--json").json()
    assert [k["kind"] for k in kinds] == ["image", "qemu", "physical", "vsphere", "hyperv"]


def test_source_add_physical_prints_the_passphrase(vault: Path) -> None:
    r = rehost(vault, "source", "add", "physical", "srv1", "--expires", "30m")
    assert "one-time passphrase (valid 30 min" in r.out and "rehost-agent register" in r.out
    [m] = _machines(vault)
    assert m["source"] == "physical" and m["state_reason"] == "waiting for its agent to register"


REFUSALS = [
    (("source", "add", "vmware", "x"),
     "unknown source kind 'vmware' (kinds: image, qemu, physical, vsphere, hyperv)"),
    (("source", "add", "qemu", "q", "--qmp-socket", "/no/such.sock"), "QMP socket /no/such.sock does not"),
    (("source", "add", "qemu", "q", "--qmp-socket", "/x", "--granularity", "1000"), "power of two"),
    (("source", "add", "physical", "p", "--expires", "8d"), "between 1 minute and 7 days"),
    (("source", "add", "image", "../evil", "DISK"), "not valid"),
]


def test_bad_input_is_one_line_and_changes_nothing(vault: Path, disk: Path) -> None:
    rehost(vault, "source", "add", "image", "vm", str(disk))
    before = _machines(vault)
    for args, message in REFUSALS:
        r = rehost(vault, *[str(disk) if a == "DISK" else a for a in args], check=False)
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert r.code == 2 and len(lines) == 1 and message in lines[0], (args, r.err)
    assert _machines(vault) == before
    assert not (vault / "agents").exists()
