"""The vault's settings: values every host of a fleet shares, kept in the state database.

They are changed on a host with ``rehost config`` (the CLI runs as its user, who can already
read and write the vault), never through the API: an API token must not be able to widen what
the API may touch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from rehost.vault.models import SettingRow
from rehost.vault.vault import Vault


def get(vault: Vault, key: str, default: Any = None) -> Any:
    with vault.session() as s:
        row = s.scalar(select(SettingRow).where(SettingRow.key == key))
        return default if row is None else row.value


def put(vault: Vault, key: str, value: Any) -> None:
    with vault.session() as s, s.begin():
        row = s.scalar(select(SettingRow).where(SettingRow.key == key).with_for_update())
        if row is None:
            s.add(SettingRow(key=key, value=value))
        else:
            row.value = value
