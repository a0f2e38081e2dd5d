"""What every request needs: a vault of its own for the request's duration, and a caller.

A ``Vault`` (its SQLAlchemy engine, its repository object with caches) is used by one thread
at a time here: requests borrow one from a small pool and give it back, so the vault is
opened (schema checked, key unlocked) once per pooled copy, not once per request, and no
two threads ever share a repository object. Long work (jobs) opens its own vault.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rehost.api.tokens import Role, authenticate
from rehost.vault.audit import Actor
from rehost.vault.models import TokenRow
from rehost.vault.vault import Vault

COOKIE = "rehost_token"
#: a state-changing request authenticated by the cookie must carry this header; a foreign
#: page cannot add it without a CORS preflight, which this server never grants (CSRF guard)
CSRF_HEADER = "X-Rehost-CSRF"
POOL_MAX = 8


class OncePassword:
    """Asks for the vault password at most once and remembers it for every copy we open."""

    def __init__(self, ask: Callable[[], str] | None) -> None:
        self._ask = ask
        self._value: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._value is None:
                assert self._ask is not None
                self._value = self._ask()
            return self._value

    @property
    def callback(self) -> Callable[[], str] | None:
        return self if self._ask is not None else None


class VaultPool:
    def __init__(self, root: Path, password: Callable[[], str] | None) -> None:
        self.root = Path(root)
        self.password = OncePassword(password)
        self._free: list[Vault] = []
        self._lock = threading.Lock()
        first = self.open()  # fail at start (no vault, wrong password), not at the first request
        _ = first.repo
        self._free.append(first)

    def open(self) -> Vault:
        """A vault that is the caller's alone (for a job thread: close it when done)."""
        return Vault.open(self.root, self.password.callback)

    @contextmanager
    def borrow(self) -> Iterator[Vault]:
        with self._lock:
            vault = self._free.pop() if self._free else None
        if vault is None:
            vault = self.open()
        try:
            yield vault
        finally:
            with self._lock:
                if len(self._free) < POOL_MAX:
                    self._free.append(vault)
                    vault = None
            if vault is not None:
                vault.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for v in free:
            v.close()


class Caller:
    """Who is calling, and how (a cookie needs the CSRF header on changes)."""

    def __init__(self, token: TokenRow, via_cookie: bool) -> None:
        self.name = token.name
        self.role = Role[token.role]
        self.via_cookie = via_cookie

    def may(self, role: Role) -> bool:
        return self.role >= role

    def actor(self, address: str, via: str = "api") -> Actor:
        """As the audit log names this caller."""
        return Actor(f"token:{self.name}", role=self.role.name, via=via, address=address)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def identify(vault: Vault, header: str | None, cookie: str | None) -> Caller | None:
    """The header wins over the cookie; None when neither holds a valid token."""
    secret = bearer(header)
    if secret is not None:
        row = authenticate(vault, secret)
        return Caller(row, via_cookie=False) if row else None
    if cookie:
        row = authenticate(vault, cookie)
        return Caller(row, via_cookie=True) if row else None
    return None
