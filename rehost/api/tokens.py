"""API tokens with roles: who may read, who may run failovers, who may change the setup.

A token is shown once, when it is made; the vault keeps only its SHA-256, so a copy of the
vault's database does not let anyone call the API. The secrets are 32 random bytes, which is
why a fast unsalted hash is enough here (nothing to guess, unlike a password).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from sqlalchemy import select

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.vault.inventory import check_name
from rehost.vault.models import TokenRow
from rehost.vault.vault import Vault

PREFIX = "rht_"
#: last_used is written at most this often per token, so reads do not turn into writes
TOUCH_EVERY = timedelta(minutes=1)


class Role(IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    reader = 1  # sees everything, changes nothing
    operator = 2  # also replicates, fails over, cancels jobs
    admin = 3  # also manages sources, targets, policies and tokens

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text]
        except KeyError:
            raise UsageError(f"role {text!r} does not exist: use reader, operator or admin") from None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(vault: Vault, name: str, role: str,
                 expires: timedelta | None = None) -> tuple[TokenRow, str]:
    """A new token; returns the row and the secret, which is never available again. With
    ``expires`` it stops working that long from now."""
    check_name(name, "token")
    parsed = Role.parse(role)
    if expires is not None and expires <= timedelta(0):
        raise UsageError("a token's expiry must be in the future (e.g. --expires 30d)")
    secret = PREFIX + secrets.token_urlsafe(32)
    with vault.session() as s, s.begin():
        if s.scalar(select(TokenRow).where(TokenRow.name == name)) is not None:
            raise AlreadyExists(f"a token named {name!r} already exists (revoke it first)")
        row = TokenRow(name=name, role=parsed.name, secret_hash=_hash(secret),
                       expires_at=datetime.now(UTC) + expires if expires is not None else None)
        s.add(row)
    return row, secret


def list_tokens(vault: Vault) -> list[TokenRow]:
    with vault.session() as s:
        return list(s.scalars(select(TokenRow).order_by(TokenRow.name)))


def revoke_token(vault: Vault, name: str) -> None:
    with vault.session() as s, s.begin():
        row = s.scalar(select(TokenRow).where(TokenRow.name == name))
        if row is None:
            raise NotFound(f"no token named {name!r}")
        s.delete(row)


def expired(row: TokenRow, now: datetime | None = None) -> bool:
    if row.expires_at is None:
        return False
    at = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return (now or datetime.now(UTC)) >= at


def authenticate(vault: Vault, secret: str) -> TokenRow | None:
    """The token a secret belongs to, or None; records when it was last used."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    with vault.session() as s, s.begin():
        row = s.scalar(select(TokenRow).where(TokenRow.secret_hash == _hash(secret)))
        if row is None:
            return None
        now = datetime.now(UTC)
        if expired(row, now):
            return None
        last = row.last_used.replace(tzinfo=UTC) if row.last_used else None
        if last is None or now - last >= TOUCH_EVERY:
            row.last_used = now
    return row
