"""Plug-in registries and typed plug-in configs: one frozen dataclass per provider kind, read
by the CLI and the API.

A field's help text lives in ``field(metadata={"help": ...})`` next to its documented
default, so ``rehost target add KIND --help`` and the API's input come from the same place.
``make_config`` turns loose input (CLI options, JSON, a vault row) into the dataclass and
refuses unknown, missing or mistyped options with one line naming the option.

(The source registry has the same ideas in ``rehost.sources.registry``; this module is kept
free of any provider so both registries can share it.)
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from rehost.errors import UsageError


class _Plugin(Protocol):
    @property
    def kind(self) -> str: ...


P = TypeVar("P", bound=_Plugin)


class Registry(Generic[P]):
    """Kinds of one sort of provider (``what``: "target"). The built-in kinds register when
    their modules (``builtin``: kind -> module) are imported, on the first lookup: importing
    the registry does not pay for QEMU or SDK imports, and a lookup of one kind imports only
    that kind's module (``rehost replicate`` of an image does not load the agent's PKI, the
    vSphere SDK or the Hyper-V scripts)."""

    def __init__(self, what: str, builtin: Mapping[str, str]) -> None:
        self.what = what
        self.builtin = dict(builtin)
        self._plugins: dict[str, P] = {}

    def register(self, plugin: P) -> P:
        if plugin.kind in self._plugins and self._plugins[plugin.kind] is not plugin:
            raise ValueError(f"{self.what} kind {plugin.kind!r} is registered twice")
        self._plugins[plugin.kind] = plugin
        return plugin

    def plugins(self) -> list[P]:
        """Every kind: the built-in ones in ``builtin``'s order, whichever of their modules
        another import loaded first (a listing, the dashboard's default kind, must not depend
        on that), then the others in registration order."""
        modules = list(dict.fromkeys(self.builtin.values()))
        for module in modules:
            importlib.import_module(module)
        rank = {m: i for i, m in enumerate(modules)}
        listed = list(self._plugins.values())

        def order(p: P) -> tuple[int, int]:
            module = getattr(getattr(p, "config", None), "__module__", "")
            return rank.get(module, len(rank)), listed.index(p)

        return sorted(listed, key=order)

    def find(self, kind: str) -> P | None:
        """The plugin of ``kind``, None for a kind this version does not know."""
        if kind not in self._plugins and kind in self.builtin:
            importlib.import_module(self.builtin[kind])
        if kind in self._plugins:
            return self._plugins[kind]
        return next((p for p in self.plugins() if p.kind == kind), None)

    def get(self, kind: str) -> P:
        """The plugin of ``kind``, or a UsageError that lists the kinds there are (in the
        order listings show them)."""
        plugin = self.find(kind)
        if plugin is None:
            known = ", ".join(p.kind for p in self.plugins())
            raise UsageError(f"unknown {self.what} kind {kind!r} (kinds: {known})")
        return plugin


@dataclass(frozen=True)
class Option:
    """One config field as the CLI and the API present it."""

    name: str
    type: type[Any]
    required: bool
    default: Any
    help: str
    #: given as a positional CLI argument rather than ``--name``
    argument: bool = False
    #: takes a list of values (a ``tuple[X, ...]`` field)
    many: bool = False
    #: names a file or folder on the rehost server (confined to the allowed roots when it
    #: comes through the API: ``field(metadata={"host_path": True})``)
    host_path: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def options(config: type[Any]) -> list[Option]:
    """The fields of a config dataclass with their types, defaults and help."""
    hints = typing.get_type_hints(config)
    out = []
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        )
        hint = hints[f.name]
        many = typing.get_origin(hint) is tuple
        out.append(Option(f.name, _unwrap(typing.get_args(hint)[0] if many else hint), required, default,
                          str(f.metadata.get("help", "")), bool(f.metadata.get("argument")), many,
                          bool(f.metadata.get("host_path"))))
    return out


def _unwrap(hint: Any) -> type[Any]:
    """``int | None`` -> int; a ``Literal`` of strings -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return type(typing.get_args(hint)[0])
    return typing.cast(type[Any], hint)


def make_config(config: type[Any], raw: Mapping[str, Any], what: str) -> Any:
    """``config`` from loose input; ``what`` names the kind in messages ("target kind local")."""
    known = {o.name: o for o in options(config)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UsageError(f"{what} has no option {unknown[0]!r} (options: {', '.join(known) or 'none'})")
    values: dict[str, Any] = {}
    for name, opt in known.items():
        if raw.get(name) is None:
            if opt.required:
                raise UsageError(f"{what} needs {opt.flag} ({opt.help})")
            continue
        values[name] = _many(what, opt, raw[name]) if opt.many else _one(what, opt, raw[name])
    try:
        return config(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{what}: {e}") from None


def _many(what: str, opt: Option, value: Any) -> tuple[Any, ...]:
    items = [value] if isinstance(value, str | Path) else value
    if not isinstance(items, list | tuple):
        raise UsageError(f"{what}: {opt.flag} takes a list, not {value!r}")
    return tuple(_one(what, opt, v) for v in items)


def _one(what: str, opt: Option, value: Any) -> Any:
    want = opt.type
    if want is bool and isinstance(value, bool):
        return value
    if want is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    if want is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if want is str and isinstance(value, str | Path) and "\0" not in str(value):
        return str(value)
    if want is Path and isinstance(value, str | Path) and str(value) and "\0" not in str(value):
        return Path(value)
    raise UsageError(f"{what}: {opt.flag} must be {want.__name__}, not {value!r}")


#: checks a path from an untrusted caller and returns the path to use: ``guard(path, what)``
PathGuard = Callable[[str, str], str]


def confined(config: type[Any], raw: Mapping[str, Any], guard: PathGuard, what: str) -> dict[str, Any]:
    """``raw`` with every host-path option passed through ``guard`` (before ``make_config``)."""
    out = dict(raw)
    for o in options(config):
        value = out.get(o.name)
        if not o.host_path or value is None:
            continue
        if o.many and isinstance(value, list | tuple):
            out[o.name] = [guard(str(v), f"{what} {o.flag}") for v in value]
        elif isinstance(value, str | Path):
            out[o.name] = guard(str(value), f"{what} {o.flag}")
    return out


def to_json(config: Any) -> dict[str, Any]:
    """The config as the vault stores it (paths as strings)."""
    return {f.name: str(v) if isinstance(v := getattr(config, f.name), Path) else v
            for f in dataclasses.fields(config) if f.init}


def describe(config: type[Any]) -> list[dict[str, Any]]:
    """The options for ``kinds`` listings and the API."""
    return [{"name": o.name, "type": o.type.__name__, "required": o.required, "list": o.many,
             "default": _plain(o.default), "help": o.help}
            for o in options(config)]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
