"""The API's one error edge: every failure becomes ``{"error": message}`` with a fitting code.

User errors (``RehostError.user_error``) say what is wrong and what to do, as on the CLI.
Anything else is logged here with its traceback and answered with a generic line, so a
response never carries a traceback, a path from a stack frame, or a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rehost.errors import AlreadyExists, InvalidState, NotFound, RehostError, UsageError, WrongPassword
from rehost.vault.roots import PathNotAllowed

log = logging.getLogger("rehost.api")


class Unauthorized(RehostError):
    """No token, or one the vault does not know."""

    exit_code = 7


class Forbidden(RehostError):
    """A valid token whose role is too low for the request."""

    exit_code = 8


class TooManyAttempts(RehostError):
    """Too many wrong tokens from one address: it must wait (``retry_after`` seconds)."""

    exit_code = 9

    def __init__(self, message: str = "", retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: most specific first: ObjectNotFound is both a BackendError and a NotFound
STATUS: list[tuple[type[RehostError], int]] = [
    (Unauthorized, 401),
    (WrongPassword, 401),
    (Forbidden, 403),
    (PathNotAllowed, 403),
    (TooManyAttempts, 429),
    (NotFound, 404),
    (AlreadyExists, 409),
    (InvalidState, 409),
    (UsageError, 400),
]

INTERNAL = "internal error: the server log has the details"

#: answers an error for a browser (the dashboard's page) or None for JSON: the API knows no pages,
#: so the app that mounts the dashboard passes this in (``rehost.portal.app``)
PageErrors = Callable[[Request, int, str], Response | None]


def status_of(e: RehostError) -> int:
    for cls, code in STATUS:
        if isinstance(e, cls):
            return code
    return 400 if e.user_error else 500


def install(app: FastAPI, page_errors: PageErrors | None = None) -> None:
    @app.exception_handler(RehostError)
    async def rehost_error(request: Request, e: RehostError) -> Response:
        code = status_of(e)
        if code >= 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        message = str(e)  # RehostError messages are written for users, whatever the code
        page = page_errors(request, code, message) if page_errors else None
        if page is not None:
            return page
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        if isinstance(e, TooManyAttempts):
            headers = {"Retry-After": str(e.retry_after)}
        return JSONResponse({"error": message}, status_code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> Response:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse({"error": INTERNAL}, status_code=500)
