"""Alembic migrations of the vault's state database (run by ``Vault.init`` and ``Vault.open``)."""
