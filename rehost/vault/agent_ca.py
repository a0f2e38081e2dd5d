"""The agents' certificate authority in the vault's database (``rehost.agent.ca_store``).

A fleet's hosts and workers share the database, not a folder: the CA that signed an agent's
certificate, the passphrases ``rehost source add physical`` issued and the revocations must be
the same wherever an enrollment, a cycle or a ``complete`` runs. The keys are sealed with the
repository's keys (AES-256-GCM in an encrypted vault, bound to their item name), so the
database alone does not hold them in clear. Each host keeps only what TLS reads by path (the
certificates and the server's key) in its own folder.

A vault made before schema 0007 kept its CA in ``<vault>/agents``: the first store that finds
the table empty imports those files and then removes the CA key and state from the folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from rehost.agent.ca_store import ITEMS, KEYS, FolderStore
from rehost.errors import InvalidState
from rehost.vault.models import AgentCARow
from rehost.vault.vault import Vault

T = TypeVar("T")
STATE = "state"
#: tries of a state change that lost its compare-and-swap to another process
CHANGE_TRIES = 100


class DatabaseCAStore:
    def __init__(self, vault: Vault, legacy_folder: Path | None = None) -> None:
        self.vault = vault
        self.legacy = legacy_folder

    def _aad(self, name: str) -> bytes:
        return f"rehost agent CA {name}".encode()

    def load(self) -> dict[str, bytes]:
        with self.vault.session() as s:
            rows = {r.name: r.data for r in s.scalars(select(AgentCARow).where(AgentCARow.name != STATE))}
        if not rows:
            return self._import_legacy()
        sealer = self.vault.repo.sealer
        return {name: sealer.open(data, self._aad(name), f"the agents' CA {name}") if name in KEYS else data
                for name, data in rows.items()}

    def create(self, items: dict[str, bytes], state: dict[str, Any]) -> None:
        sealer = self.vault.repo.sealer
        rows = [AgentCARow(name=n, data=sealer.seal(items[n], self._aad(n)) if n in KEYS else items[n],
                           version=0) for n in ITEMS]
        rows.append(AgentCARow(name=STATE, data=json.dumps(state).encode(), version=0))
        try:
            with self.vault.session() as s, s.begin():
                s.add_all(rows)
        except IntegrityError:
            pass  # another process created it first: its CA is the one

    def read_state(self) -> dict[str, Any]:
        return self._state()[0]

    def update_state(self, change: Callable[[dict[str, Any]], T]) -> T:
        for _ in range(CHANGE_TRIES):
            state, version = self._state()
            result = change(state)
            with self.vault.session() as s, s.begin():
                swapped = s.execute(update(AgentCARow)
                                    .where(AgentCARow.name == STATE, AgentCARow.version == version)
                                    .values(data=json.dumps(state).encode(), version=version + 1))
            if swapped.rowcount == 1:  # type: ignore[attr-defined]
                return result
        raise InvalidState(f"the agents' CA state changed {CHANGE_TRIES} times under this change; try again")

    def _state(self) -> tuple[dict[str, Any], int]:
        with self.vault.session() as s:
            row = s.get(AgentCARow, STATE)
            if row is None:
                raise InvalidState("the agents' CA has no state in the database")
            data: dict[str, Any] = json.loads(row.data)
            return data, row.version

    def _import_legacy(self) -> dict[str, bytes]:
        """An old vault's CA files: into the database, then the key and state off the disk."""
        if self.legacy is None or not (self.legacy / "ca-key.pem").is_file():
            return {}
        old = FolderStore(self.legacy)
        items, state = old.load(), old.read_state()
        self.create(items, state)
        stored = self.load()
        if stored.get("ca-key") == items["ca-key"]:  # ours went in (or an identical import)
            for leftover in ("ca-key.pem", "state.json"):
                (self.legacy / leftover).unlink(missing_ok=True)
        return stored
