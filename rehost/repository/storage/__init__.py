"""Storage backends for the repository behind one small protocol, plus wrappers.

``open_storage(url, **options)`` is the one way to get a ``Storage`` from configuration:

- ``local:/path`` or a plain path (``/srv/repo``, ``./repo``): ``LocalStorage``;
  option ``create=True`` makes a new repository folder tree first;
- ``memory:``: a fresh ``MemoryStorage``; ``memory:NAME``: the in-process one called NAME,
  so two opens see the same objects;
- ``s3:BUCKET[/PREFIX]``: ``S3Storage`` (options ``endpoint``, ``region``; credentials from
  the environment), see ``s3.py``;
- ``azure:CONTAINER[/PREFIX]``: ``AzureBlobStorage`` (option ``account_url``; credential from
  the environment), see ``azure_blob.py``.

Object stores also take the URL form ``s3://BUCKET/PREFIX?endpoint=URL&region=R`` and
``azure://CONTAINER/PREFIX?account_url=URL``: what a vault's configuration stores. The
query holds options only; keys and secrets always come from the environment.

Options every backend accepts (applied as wrappers, innermost first):

- ``bytes_per_second``: a bandwidth limit (``ThrottledStorage``);
- ``read_only=True``: refuse writes (``ReadOnlyStorage``).

Unknown schemes and options raise ``UsageError`` naming what is supported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from rehost.errors import UsageError
from rehost.repository.storage.azure_blob import open_azure_storage
from rehost.repository.storage.base import Kind, ObjectInfo, Storage
from rehost.repository.storage.faults import FaultyStorage
from rehost.repository.storage.local import LocalStorage
from rehost.repository.storage.memory import MemoryStorage, shared_memory_storage
from rehost.repository.storage.readonly import ReadOnlyStorage
from rehost.repository.storage.retry import RetryingStorage
from rehost.repository.storage.s3 import open_s3_storage
from rehost.repository.storage.throttle import ThrottledStorage

__all__ = [
    "FaultyStorage",
    "Kind",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "ReadOnlyStorage",
    "RetryingStorage",
    "Storage",
    "ThrottledStorage",
    "open_storage",
]

#: An opener gets the part after ``scheme:`` and the backend's own options.
Opener = Callable[[str, dict[str, Any]], Storage]
#: Options ``open_storage`` applies as wrappers around any backend.
WRAPPER_OPTIONS = frozenset({"bytes_per_second", "read_only"})


def _open_local(rest: str, options: dict[str, Any]) -> Storage:
    if not rest:
        raise UsageError("local: needs a path, e.g. local:/srv/rehost-repo")
    create = bool(options.get("create", False))
    path = Path(rest).expanduser()
    return LocalStorage.create(path) if create else LocalStorage(path)


def _open_memory(rest: str, options: dict[str, Any]) -> Storage:
    return shared_memory_storage(rest) if rest else MemoryStorage()


#: scheme -> (opener, the backend's own option names)
_OPENERS: dict[str, tuple[Opener, frozenset[str]]] = {
    "local": (_open_local, frozenset({"create"})),
    "memory": (_open_memory, frozenset()),
    # Object stores, each in its own module (its SDK imported only when one opens); their
    # openers wrap themselves in RetryingStorage: object stores fail transiently, local disks
    # do not. Credentials come from the environment, never from options.
    "s3": (open_s3_storage, frozenset({"endpoint", "region"})),  # s3:bucket[/prefix]
    "azure": (open_azure_storage, frozenset({"account_url"})),  # azure:container[/prefix]
}


def open_storage(url: str, **options: Any) -> Storage:
    """Open the storage ``url`` names, with the wrappers its options ask for."""
    scheme, rest = _split(url)
    if scheme != "local":
        # s3://BUCKET/PREFIX?endpoint=URL: the URL form; options in the query (never secrets:
        # those come from the environment), explicit options win
        rest = rest[2:] if rest.startswith("//") else rest
        rest, _, query = rest.partition("?")
        options = {**dict(parse_qsl(query)), **options}
    entry = _OPENERS.get(scheme)
    if entry is None:
        raise UsageError(
            f"unknown storage scheme {scheme!r} in {url!r}; supported: "
            + ", ".join(f"{s}:" for s in sorted(_OPENERS))
            + " or a plain path (write local:PATH for a path that contains ':')"
        )
    opener, own_options = entry
    unknown = set(options) - own_options - WRAPPER_OPTIONS
    if unknown:  # checked before opening: create=True must not run with a typo next to it
        raise UsageError(
            f"unknown option(s) {', '.join(sorted(unknown))} for {scheme}: storage; "
            f"supported: {', '.join(sorted(own_options | WRAPPER_OPTIONS))}"
        )
    storage = opener(rest, {k: v for k, v in options.items() if k in own_options})
    bytes_per_second = options.get("bytes_per_second")
    if bytes_per_second is not None:
        storage = ThrottledStorage(storage, bytes_per_second)
    if options.get("read_only", False):
        storage = ReadOnlyStorage(storage)
    return storage


def _split(url: str) -> tuple[str, str]:
    """``(scheme, rest)``; a URL without a scheme before its first ``/`` is a local path."""
    head = url.split("/", 1)[0]
    if ":" not in head:
        return "local", url
    scheme, _, rest = url.partition(":")
    return scheme.lower(), rest
