"""Where the agents' certificate authority keeps its keys, certificates and state.

Two places, one contract: a folder of files (a lab or test CA, and where vaults made before
schema 0007 kept theirs), and the vault's database (``rehost.vault.agent_ca``), so every host
and worker of a fleet signs, verifies and revokes with the same CA. The CA itself
(``rehost.agent.pki``) never knows which one it has.

Items are PEM bytes named ``ca-key``, ``ca-cert``, ``server-key`` and ``server-cert``; the
state is a JSON object (passphrase hashes, enrolled machines, revoked serials) changed only
through ``update_state``, which applies a change as one step however many processes race.
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from rehost.fs import write_atomic, write_private

T = TypeVar("T")
ITEMS = ("ca-key", "ca-cert", "server-key", "server-cert")
#: the items that are secrets: files readable by their owner only, sealed in a database
KEYS = ("ca-key", "server-key")


class CAStore(Protocol):
    def load(self) -> dict[str, bytes]:
        """Every item stored; empty before the CA exists."""

    def create(self, items: dict[str, bytes], state: dict[str, Any]) -> None:
        """Store a new CA, unless one exists already: the first creator wins, and the others
        use its CA (they ``load`` again)."""

    def read_state(self) -> dict[str, Any]: ...

    def update_state(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` (which edits the state in place) as one step; its result."""


class FolderStore:
    """The CA as files in a folder (``<item>.pem``, ``state.json``), changed under a lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._mutex = threading.Lock()

    def exists(self) -> bool:
        return (self.folder / "ca-cert.pem").is_file()

    def load(self) -> dict[str, bytes]:
        if not self.exists():
            return {}
        return {name: (self.folder / f"{name}.pem").read_bytes() for name in ITEMS}

    def create(self, items: dict[str, bytes], state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock():
            if self.exists():
                return
            for name in ITEMS:
                if name == "ca-cert":
                    continue
                (write_private if name in KEYS else write_atomic)(self.folder / f"{name}.pem", items[name])
            self._save(state)
            write_atomic(self.folder / "ca-cert.pem", items["ca-cert"])  # last: it means "complete"

    def read_state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / "state.json").read_text())
        return data

    def update_state(self, change: Callable[[dict[str, Any]], T]) -> T:
        with self._lock():
            state = self.read_state()
            result = change(state)
            self._save(state)
            return result

    def _save(self, state: dict[str, Any]) -> None:
        write_private(self.folder / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with self._mutex, open(self.folder / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
