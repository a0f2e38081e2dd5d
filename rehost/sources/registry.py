"""The source plug-in registry: every kind of source, its typed config and its capabilities.

A source kind (``image``, ``qemu``, ``physical``; ``vsphere`` and ``hyperv`` later) is one
``SourcePlugin``. The CLI (``rehost source add KIND``) and the API (``POST /api/v1/sources``)
build their inputs from the plugin's config dataclass, and the vault asks the plugin, never
a kind string, what a source can do (``capabilities``) and how to open it (``open``). So a
new source touches no service code: it declares a plugin and registers it here.

Config dataclasses are frozen; each field carries its help text in
``field(metadata={"help": ...})`` and its documented default; ``__post_init__`` refuses a
bad value with a ``UsageError`` that names it. ``make_config`` turns loose input (CLI
options, JSON) into that dataclass, refusing unknown and missing options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rehost import plugin_config
from rehost.spec import MachineSpec

if TYPE_CHECKING:
    from rehost.agent.ca_store import CAStore
    from rehost.agent.pki import CertificateAuthority
    from rehost.replication.digests import DigestCache
    from rehost.sources.base import SourceProvider

#: how a source tells a cycle what changed since the parent point
ChangeTracking = Literal["dirty-bitmap", "agent-digests", "vsphere-cbt", "hyperv-rct", "hash-diff"]


@dataclass(frozen=True)
class Capabilities:
    """What a kind of source can do, asked apart from doing it (nbdcopy's capability queries)."""

    #: dirty-bitmap: QEMU's changed-block tracking; vsphere-cbt: VMware's QueryChangedDiskAreas;
    #: hyperv-rct: Hyper-V's Resilient Change Tracking (GetVirtualDiskChanges);
    #: agent-digests: the agent compares 4 KiB
    #: digests itself; hash-diff: every cycle reads all allocated data and compares digests
    change_tracking: ChangeTracking
    #: a failover can shut the source machine down (``--shutdown-source``)
    can_shutdown: bool = False
    #: how app-consistent points freeze the guest ("guest-agent", "fsfreeze"), None: cannot
    app_consistent: str | None = None
    #: the source has an agent of its own that the server asks for heartbeats
    has_heartbeat: bool = False
    #: the machine's disks arrive after registration (with its agent's enrollment)
    disks_arrive_later: bool = False
    #: the disks it discovers are files on the rehost server (their refs are paths)
    disks_are_files: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SourceContext:
    """What a provider may need from the vault around it, handed in as values: the agents'
    certificate authority (physical machines) and the server's digest cache. Built by the
    vault side (``rehost.vault.inventory.source_context``); a source never imports the vault.
    """

    #: this host's folder of the agents' CA files (``<vault>/agents``)
    agents_dir: Path
    digests: DigestCache
    #: where the CA lives (the vault's database); None: the files of ``agents_dir``
    ca_store: CAStore | None = None

    def authority(self) -> CertificateAuthority:
        from rehost.agent.pki import CertificateAuthority

        return CertificateAuthority(self.agents_dir, self.ca_store)


@dataclass(frozen=True)
class SourcePlugin:
    """One kind of source.

    ``discover(name, config)`` finds the machine (disks, and firmware, CPUs, memory, NICs,
    guest OS where the source knows them cheaply) and returns its ``MachineSpec``, whose
    ``settings`` are what the vault stores for ``open``. ``open(settings, context)`` builds the
    provider a cycle or a failover talks to. ``enroll`` (optional) runs once the machine is
    registered (the agent's one-time passphrase) and returns what the operator must be shown.
    """

    kind: str
    summary: str
    config: type[Any]
    capabilities: Capabilities
    discover: Callable[[str, Any], MachineSpec]
    open: Callable[[Mapping[str, Any], SourceContext], SourceProvider]
    enroll: Callable[[MachineSpec, Any, SourceContext], Any] | None = None
    #: what the machine name means for this kind, beyond the rules every name follows
    name_hint: str = ""


#: modules that define the built-in plugins, in the order listings show them; imported on
#: first lookup (they import QEMU, libnbd and the agent's PKI, which an ``import
#: rehost.sources.registry`` should not pay for)
_BUILTIN = {"image": "rehost.sources.image", "qemu": "rehost.sources.qemu_plugin",
            "physical": "rehost.sources.physical", "vsphere": "rehost.sources.vsphere",
            "hyperv": "rehost.sources.hyperv"}
REGISTRY: plugin_config.Registry[SourcePlugin] = plugin_config.Registry("source", _BUILTIN)
register = REGISTRY.register
#: every source kind, the built-in ones first in ``_BUILTIN``'s order
plugins = REGISTRY.plugins
#: the plugin of a kind, or None for a kind this version does not know (listings still show
#: such a machine; operating on it says why it cannot)
find = REGISTRY.find
#: the plugin of a kind, or a UsageError that lists the kinds there are
get = REGISTRY.get


def capabilities(kind: str) -> Capabilities:
    return get(kind).capabilities


# -- typed configs (shared with the target registry: ``rehost.plugin_config``) -------------


def options(config: type[Any]) -> list[plugin_config.Option]:
    """The fields of a kind's config dataclass with their types, defaults and help."""
    return plugin_config.options(config)


def make_config(kind: str, raw: Mapping[str, Any]) -> Any:
    """The kind's config from loose input (CLI options, API JSON): unknown options, missing
    ones and values of the wrong type are refused with one line naming the option."""
    return plugin_config.make_config(get(kind).config, raw, f"source kind {kind}")


def describe() -> list[dict[str, Any]]:
    """Every kind with its options and capabilities (``rehost source kinds``, the API)."""
    return [
        {"kind": p.kind, "summary": p.summary, "capabilities": p.capabilities.to_json(),
         "options": plugin_config.describe(p.config)}
        for p in plugins()
    ]
