"""The schema fast path: ``schema.HEAD`` is Alembic's head, and opening a vault that is at it
does not load Alembic (what every command would otherwise pay, ~85 ms)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from rehost.vault import schema
from rehost.vault.vault import Vault


def test_head_is_alembics_head(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    try:
        cfg = schema.alembic_config(vault.engine)
        assert ScriptDirectory.from_config(cfg).get_current_head() == schema.HEAD
        assert schema.current(vault.engine) == schema.HEAD  # a new vault is migrated to it
    finally:
        vault.close()


def test_an_up_to_date_vault_opens_without_alembic(tmp_path: Path) -> None:
    Vault.init(tmp_path / "vault").close()
    probe = ("import sys; from rehost.vault.vault import Vault; "
             f"Vault.open({str(tmp_path / 'vault')!r}).close(); print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_old_vault_is_still_upgraded(tmp_path: Path) -> None:
    """A vault one migration behind (its recorded revision moved back, the newest tables
    dropped) goes through Alembic again and comes back at HEAD."""
    vault = Vault.init(tmp_path / "vault")
    try:
        from alembic import command

        cfg = schema.alembic_config(vault.engine)
        with vault.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "-1")
        assert schema.current(vault.engine) not in (None, schema.HEAD)
    finally:
        vault.close()
    Vault.open(tmp_path / "vault").close()
    reopened = Vault.open(tmp_path / "vault")
    try:
        assert schema.current(reopened.engine) == schema.HEAD
    finally:
        reopened.close()
