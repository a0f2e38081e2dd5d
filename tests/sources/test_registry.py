"""The source registry: every kind with its typed config and capabilities; loose input becomes
that config or one line naming what is wrong; sources stand without the vault."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.sources import registry
from rehost.sources.physical import PhysicalConfig
from rehost.sources.qemu_plugin import QemuConfig

REPO = Path(__file__).resolve().parents[2]


def test_every_kind_has_a_config_with_help_and_capabilities() -> None:
    kinds = {p.kind: p for p in registry.plugins()}
    assert list(kinds) == ["image", "qemu", "physical", "vsphere", "hyperv"]
    for plugin in kinds.values():
        assert plugin.summary and plugin.discover and plugin.open
        for option in registry.options(plugin.config):
            assert option.help, f"{plugin.kind}.{option.name} has no help text"
    caps = {k: p.capabilities for k, p in kinds.items()}
    assert caps["image"].change_tracking == "hash-diff" and not caps["image"].can_shutdown
    assert caps["qemu"].change_tracking == "dirty-bitmap" and caps["qemu"].app_consistent == "guest-agent"
    assert caps["physical"].change_tracking == "agent-digests" and caps["physical"].has_heartbeat
    assert caps["physical"].disks_arrive_later and not caps["qemu"].disks_arrive_later


def test_describe_lists_options_with_documented_defaults() -> None:
    described = {k["kind"]: k for k in registry.describe()}
    qemu = {o["name"]: o for o in described["qemu"]["options"]}
    assert qemu["qmp_socket"]["required"] and qemu["granularity"]["default"] == 4096
    assert "4096" in qemu["granularity"]["help"]  # the default is documented where it is set
    image = {o["name"]: o for o in described["image"]["options"]}
    assert image["paths"]["list"] and image["paths"]["required"]
    assert described["physical"]["capabilities"]["can_shutdown"] is True


def test_loose_input_becomes_the_typed_config() -> None:
    cfg = registry.make_config("qemu", {"qmp_socket": "/run/vm.qmp", "granularity": "65536"})
    assert cfg == QemuConfig(qmp_socket="/run/vm.qmp", granularity=65536)
    assert registry.make_config("image", {"paths": "a.qcow2"}).paths == ("a.qcow2",)
    assert registry.make_config("physical", {}) == PhysicalConfig(expires="1h")


@pytest.mark.parametrize(("kind", "raw", "message"), [
    ("vmware", {}, "unknown source kind 'vmware' (kinds: image, qemu, physical, vsphere, hyperv)"),
    ("image", {"paths": ["a"], "colour": "blue"}, "source kind image has no option 'colour'"),
    ("qemu", {}, "source kind qemu needs --qmp-socket"),
    ("qemu", {"qmp_socket": " "}, "give the QMP socket of the running QEMU"),
    ("qemu", {"qmp_socket": "/x", "granularity": "lots"}, "--granularity must be int, not 'lots'"),
    ("qemu", {"qmp_socket": "/x", "granularity": 1000}, "granularity must be a power of two >= 512"),
    ("qemu", {"qmp_socket": "/x", "guest_agent": "/no/such.sock"}, "guest agent socket /no/such.sock"),
    ("image", {"paths": []}, "give at least one disk image"),
    ("image", {"paths": [{"a": 1}]}, "--paths must be str"),
    ("physical", {"expires": "10s"}, "between 1 minute and 7 days, not 10 s"),
    ("physical", {"expires": "soon"}, "'soon' is not a duration"),
    ("physical", {"port": 70000}, "port 70000 is not a TCP port"),
])
def test_bad_input_is_one_line_naming_it(kind: str, raw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        registry.make_config(kind, raw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sources_never_import_the_vault() -> None:
    """The adapters stand alone (import-linter checks the same statically): importing every
    source module, and opening a provider through the registry, loads no rehost.vault."""
    script = """
import pkgutil, sys, importlib, tempfile, pathlib
import rehost.sources
for m in pkgutil.iter_modules(rehost.sources.__path__):
    importlib.import_module(f"rehost.sources.{m.name}")
from rehost.sources import registry
from rehost.replication.digests import DigestCache
tmp = pathlib.Path(tempfile.mkdtemp())
ctx = registry.SourceContext(agents_dir=tmp / "agents", digests=DigestCache(tmp / "cache"))
for p in registry.plugins():
    p.open({"qmp_socket": "/x"}, ctx)
bad = sorted(m for m in sys.modules if m.startswith(("rehost.vault", "sqlalchemy")))
print(",".join(bad))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_a_lookup_imports_only_that_kinds_module() -> None:
    """``rehost replicate`` of an image asks the registry for ``image`` alone: the agent's PKI,
    libnbd's physical source, the vSphere SDK and the Hyper-V scripts stay unloaded (issue 17:
    start-up time). Every built-in kind is found by its own module."""
    script = """
import sys
from rehost.sources import registry
from rehost.vault import agents
assert registry.find("image").kind == "image"
loaded = sorted(m for m in sys.modules if m.startswith(("rehost.sources.", "rehost.agent")))
print(",".join(loaded))
for kind in registry._BUILTIN:
    assert registry.find(kind).kind == kind, kind
assert registry.find("nonesuch") is None
assert agents.KIND == registry.get("physical").kind
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.strip().split(","))
    assert "rehost.sources.image" in loaded
    others = {"rehost.sources.physical", "rehost.agent.pki", "rehost.agent.client",
              "rehost.sources.vsphere", "rehost.sources.hyperv", "rehost.sources.qemu_plugin"}
    assert not loaded & others, loaded
