"""Which folders a path that comes over the network may point into (issue 19).

An API caller names files on the rehost server: disk images, a local target's folder, a
probe's script, a QEMU's sockets. Without a limit, an admin token could register any file the
server can read as a disk and export it. So a path from the API must resolve (symlinks
followed) inside one of the vault's *allowed roots*: by default its own ``imports/`` and
``targets/`` folders; a user on the host adds others with ``rehost config allow-root DIR``.
Device nodes are refused unless their root was allowed ``--devices``. The CLI on the host is
not confined: it runs as its user, who can read those files anyway.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rehost.errors import NotFound, RehostError, UsageError
from rehost.vault import settings
from rehost.vault.vault import Vault

KEY = "allowed_roots"
#: the folders every vault allows, relative to the vault's folder
DEFAULT_ROOTS = ("imports", "targets")


class PathNotAllowed(RehostError):
    """A path from the API leads outside the allowed roots (answered 403)."""

    exit_code = 8


@dataclass(frozen=True)
class Root:
    path: Path
    devices: bool = False
    default: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "devices": self.devices, "default": self.default}


def allowed_roots(vault: Vault) -> list[Root]:
    """The vault's default roots, then those added with ``allow-root``."""
    extra = settings.get(vault, KEY, []) or []
    return ([Root(vault.root.absolute() / d, default=True) for d in DEFAULT_ROOTS]
            + [Root(Path(r["path"]), bool(r.get("devices"))) for r in extra])


def allow_root(vault: Vault, folder: Path, *, devices: bool = False) -> Root:
    """Allow ``folder`` (an existing directory, stored resolved) for paths from the API."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder on this host")
    resolved = Path(os.path.realpath(folder))
    extra = [r for r in settings.get(vault, KEY, []) or [] if r["path"] != str(resolved)]
    extra.append({"path": str(resolved), "devices": devices})
    settings.put(vault, KEY, extra)
    return Root(resolved, devices)


def deny_root(vault: Vault, folder: Path) -> None:
    resolved = str(Path(os.path.realpath(folder)))
    extra = settings.get(vault, KEY, []) or []
    kept = [r for r in extra if r["path"] not in (resolved, str(folder))]
    if len(kept) == len(extra):
        shown = ", ".join(r["path"] for r in extra) or "none"
        raise NotFound(f"{folder} is not an allowed root (added ones: {shown}; the vault's own "
                       f"{' and '.join(DEFAULT_ROOTS)} folders cannot be removed)")
    settings.put(vault, KEY, kept)


def confine(vault: Vault, path: str | Path, what: str) -> Path:
    """``path`` resolved, if it lies in an allowed root; else ``PathNotAllowed`` saying why.

    ``what`` names the path in the message ("image", "target folder"). The answer is the
    resolved path, and that is what the caller must use: a symlink changed after this check
    cannot lead elsewhere.
    """
    given = Path(path)
    if not given.is_absolute():
        raise UsageError(f"{what} {str(path)!r}: give an absolute path on the rehost server")
    resolved = Path(os.path.realpath(given))
    via = f" (a symlink to {resolved})" if resolved != given else ""
    roots = allowed_roots(vault)
    root = next((r for r in roots if _inside(resolved, Path(os.path.realpath(r.path)))), None)
    if root is None:
        shown = ", ".join(str(r.path) for r in roots)
        raise PathNotAllowed(
            f"{what} {str(path)!r}{via} is outside the folders the API may use ({shown}); "
            "a user on the server can allow a folder with: rehost config allow-root DIR")
    if _is_device(resolved) and not root.devices:
        raise PathNotAllowed(
            f"{what} {str(path)!r}{via} is a device; devices are refused unless their folder is "
            f"allowed for them: rehost config allow-root {root.path} --devices")
    return resolved


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _is_device(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def guard(vault: Vault) -> Callable[[str, str], str]:
    """``confine`` in the shape the services take (``rehost.plugin_config.PathGuard``)."""
    return lambda path, what: str(confine(vault, path, what))
