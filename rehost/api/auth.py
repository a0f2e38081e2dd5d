"""Request dependencies: the borrowed vault, and the caller with at least a given role.

Readers read; operators replicate, fail over, cancel and confirm plan steps; admins manage sources, targets,
policies and tokens. A token comes as ``Authorization: Bearer`` or, for the dashboard, in
the HttpOnly cookie set at sign-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rehost.api.deps import COOKIE, CSRF_HEADER, Caller, VaultPool, identify
from rehost.api.errors import Forbidden, Unauthorized
from rehost.api.signin import SignInGuard
from rehost.api.tokens import Role
from rehost.vault import audit
from rehost.vault.vault import Vault

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A token from `rehost token create NAME --role reader|operator|admin`.",
)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def pool_of(request: Request) -> VaultPool:
    pool = request.app.state.pool
    assert isinstance(pool, VaultPool)
    return pool


def guard_of(request: Request) -> SignInGuard:
    guard = request.app.state.signin_guard
    assert isinstance(guard, SignInGuard)
    return guard


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def borrow_vault(request: Request) -> Iterator[Vault]:
    with pool_of(request).borrow() as vault:
        yield vault


VaultDep = Annotated[Vault, Depends(borrow_vault)]


def needs(role: Role) -> Callable[..., Caller]:
    """A dependency that admits callers of ``role`` or higher."""

    def check(
        request: Request,
        vault: VaultDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
    ) -> Caller:
        header = f"Bearer {credentials.credentials}" if credentials else None
        cookie = request.cookies.get(COOKIE)
        address = client_address(request)
        guard = guard_of(request)
        if header or cookie:
            guard.check(address)
        caller = identify(vault, header, cookie)
        if caller is None:
            if header or cookie:
                guard.failed(address)
            raise Unauthorized("a valid API token is needed: send 'Authorization: Bearer TOKEN' "
                               "(an admin makes one with: rehost token create NAME --role reader)")
        guard.succeeded(address)
        audit.identified(caller.actor(address, via="ui" if caller.via_cookie else "api"))
        if not caller.may(role):
            raise Forbidden(f"token {caller.name!r} has the {caller.role.name} role; "
                            f"this needs {role.name} or higher")
        unsafe = request.method not in SAFE_METHODS
        if caller.via_cookie and unsafe and request.headers.get(CSRF_HEADER) != "1":
            raise Forbidden(f"a change made with the sign-in cookie needs the {CSRF_HEADER}: 1 header")
        request.state.caller = caller
        return caller

    return check


Reader = Annotated[Caller, Depends(needs(Role.reader))]
Operator = Annotated[Caller, Depends(needs(Role.operator))]
Admin = Annotated[Caller, Depends(needs(Role.admin))]
