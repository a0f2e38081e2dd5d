"""The API's side of the audit log: one entry per state-changing request, and the log itself.

``AuditMiddleware`` wraps every request to ``/api`` and the dashboard: it records each request
that could change something (POST, PUT, PATCH, DELETE) and each refused token (401, 429),
whatever its method, with the caller the auth dependency identified, the route, its path
parameters and body (secrets removed), the answer's status and error, and the job it started
(from the ``Location`` header). Routes need no code for it, so a new route is audited too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import anyio
from fastapi import APIRouter, Query

from rehost.api import schemas
from rehost.api.auth import Admin, VaultDep
from rehost.api.deps import VaultPool
from rehost.vault import audit, roots
from rehost.vault.audit import Actor

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("rehost.api")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
AUDITED_PREFIXES = ("/api/", "/ui/", "/metrics")
#: the most of a request's body kept for its parameters
BODY_LIMIT = 64 * 1024
ERROR_LIMIT = 4096


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(AUDITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        via = "ui" if path.startswith("/ui/") else "api"
        body = bytearray()
        answer: dict[str, Any] = {"status": None, "location": None, "error": bytearray()}

        async def receive_noting() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < BODY_LIMIT:
                body.extend(message.get("body", b"")[: BODY_LIMIT - len(body)])
            return message

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = int(message["status"])
                for k, v in message.get("headers", []):
                    if k.lower() == b"location":
                        answer["location"] = v.decode("latin-1")
            elif (message["type"] == "http.response.body" and (answer["status"] or 0) >= 400
                  and len(answer["error"]) < ERROR_LIMIT):
                answer["error"].extend(message.get("body", b"")[:ERROR_LIMIT])
            await send(message)

        with audit.acting_as(Actor("anonymous", via=via, address=str(client[0]))) as slot:
            try:
                await self.app(scope, receive_noting, send_noting)
            finally:
                status = answer["status"]
                if scope["method"] in UNSAFE or status in (401, 429):
                    entry = _entry(scope, slot.actor, bytes(body), answer)
                    pool = scope["app"].state.pool
                    await anyio.to_thread.run_sync(_write, pool, entry)


def _entry(scope: Scope, actor: Actor, body: bytes, answer: dict[str, Any]) -> dict[str, Any]:
    route = scope.get("route")
    params: dict[str, Any] = dict(scope.get("path_params") or {})
    template = _template(str(scope.get("path", "")), getattr(route, "path", None), params)
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        params["query"] = dict(parse_qsl(query))
    parsed = _body(scope, body)
    if parsed is not None:
        params["body"] = parsed
    status = answer["status"]
    result = ("ok" if status is not None and status < 400
              else "denied" if status in (401, 403, 429) else "error")
    location = answer["location"] or ""
    job = location.rsplit("/", 1)[-1] if "/jobs/" in location else None
    name = (params.get("name") or params.get("job_id")
            or (parsed.get("name") if isinstance(parsed, dict) else None))
    return {"operation": f"{scope['method']} {template}", "actor": actor, "object": str(name or ""),
            "params": params, "result": result, "status": status, "detail": _error(answer["error"]),
            "job_id": job}


def _template(path: str, route_path: str | None, params: dict[str, Any]) -> str:
    """The route's path with its prefix (a route of an included router knows only its own part)."""
    if not route_path:
        return path
    try:
        expanded = route_path.format(**params)
    except (KeyError, IndexError, ValueError):
        return route_path
    return path[: len(path) - len(expanded)] + route_path if path.endswith(expanded) else route_path


def _body(scope: Scope, body: bytes) -> Any:
    if not body:
        return None
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    kind = headers.get(b"content-type", b"").split(b";")[0].strip()
    try:
        if kind == b"application/json":
            return json.loads(body)
        if kind == b"application/x-www-form-urlencoded":
            return dict(parse_qsl(body.decode()))
    except (ValueError, UnicodeDecodeError):
        pass
    return f"<{len(body)} bytes of {kind.decode('latin-1') or 'unknown type'}>"


def _error(raw: bytearray) -> str:
    if not raw:
        return ""
    try:
        data = json.loads(bytes(raw))
    except ValueError:
        return ""  # a page (the dashboard's error page): the status says enough
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _write(pool: VaultPool, entry: dict[str, Any]) -> None:
    operation = entry.pop("operation")
    try:
        with pool.borrow() as vault:
            audit.record(vault, operation, **entry)
    except Exception:  # the answer is sent; the failure to record it must be seen by the operator
        log.exception("the audit log could not record %s", operation)


router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[schemas.AuditOut])
def list_audit(vault: VaultDep, _: Admin,
               since: str | None = Query(None, max_length=40, description="e.g. 24h, 7d, or an ISO time"),
               actor: str | None = Query(None, max_length=200, description="only this actor (token:NAME)"),
               limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
    """Who did what, newest first: every state-changing request and CLI command, with its actor,
    parameters (secrets removed) and result. Entries are never deleted through the API;
    retention (``rehost config set audit-retention``) removes old ones."""
    rows = audit.entries(vault, since=audit.parse_since(since) if since else None, actor=actor, limit=limit)
    return [audit.entry_json(r) for r in rows]


@router.get("/config/roots", response_model=list[schemas.RootOut], tags=["infrastructure"])
def list_roots(vault: VaultDep, _: Admin) -> list[dict[str, Any]]:
    """The folders paths given to the API may lead into (image sources, local target folders,
    probe scripts, QEMU sockets). Changed on the server only: ``rehost config allow-root DIR``."""
    return [r.to_json() for r in roots.allowed_roots(vault)]


