"""The target plug-in registry: every kind of target, its typed config and its capabilities.

A target kind (``local``; ``azure`` later; ``memory``, the test double) is one
``TargetPlugin``. ``rehost target add KIND NAME`` and ``POST /api/v1/targets/{kind}`` build their
inputs from the plugin's config dataclass (``rehost.plugin_config``), and the failover
services ask the target's ``capabilities``, never its kind, how to run a plan. A new target
touches no service code: it declares a plugin, in a module listed in ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rehost import plugin_config
from rehost.targets.base import Capabilities, Target


@dataclass(frozen=True)
class TargetPlugin:
    """One kind of target.

    ``open(config)`` builds the provider; ``prepare(config)`` (optional) makes what a new
    target needs before it is registered (the local target's folder). ``test_double`` labels
    kinds that run no real machine, so listings and help say so.
    """

    kind: str
    summary: str
    config: type[Any]
    capabilities: Capabilities
    open: Callable[[Any], Target]
    prepare: Callable[[Any], None] | None = None
    test_double: bool = False

    def make_config(self, raw: Mapping[str, Any]) -> Any:
        return plugin_config.make_config(self.config, raw, f"target kind {self.kind}")


#: the built-in kinds' modules (the local target pulls in QEMU helpers that
#: ``import rehost.targets.registry`` should not pay for)
REGISTRY: plugin_config.Registry[TargetPlugin] = plugin_config.Registry(
    "target", {"local": "rehost.targets.local", "azure": "rehost.targets.azure.target",
               "memory": "rehost.targets.memory"})
register = REGISTRY.register
plugins = REGISTRY.plugins
get = REGISTRY.get


def open_target(kind: str, settings: Mapping[str, Any]) -> Target:
    """The provider for a registered target (``settings`` as the vault stored them)."""
    plugin = get(kind)
    return plugin.open(plugin.make_config(settings))


def describe() -> list[dict[str, Any]]:
    """Every kind with its options and capabilities (``rehost target kinds``, the API)."""
    return [{"kind": p.kind, "summary": p.summary, "test_double": p.test_double,
             "capabilities": p.capabilities.to_json(), "options": plugin_config.describe(p.config)}
            for p in plugins()]
