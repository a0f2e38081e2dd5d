"""The fake's plumbing: ARM errors, replies, routing, long-running operations, state.

Test fake, not Azure. Everything a handler needs comes in a ``Ctx``; a handler returns a
``Reply`` or raises ``ArmError``, which becomes ARM's error body
``{"error": {"code": ..., "message": ...}}``.

Routes are matched without regard to case, as ARM does (the SDKs send ``resourcegroups`` in
some paths and ``resourceGroups`` in others); ids in answers use Azure's own casing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

#: the Retry-After on an operation's "InProgress" status answers. ARM sends whole seconds;
#: without the header (or with 0) the SDK's pollers wait their polling interval (30 s by
#: default). azure-core's poller reads the header as a float, so the fake says 0.05 s to keep
#: tests fast: not a valid HTTP value, a fake's shortcut. The initial 201/202 answers carry
#: none, because the network SDK parses that one as an integer.
LRO_RETRY_AFTER = "0.05"


class ArmError(Exception):
    """An ARM error answer."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> JSON:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(kind: str, name: str, rg: str) -> ArmError:
    """ARM's 404 for a resource under an existing resource group (``ResourceNotFound``)."""
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{kind}/{name}' under resource group '{rg}' was not found. "
                    "For more details please go to https://aka.ms/ARMResourceNotFoundFix")


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def principal(folder: Path) -> JSON:
    """The one service principal the fake knows, made once per folder (``principal.json``, 0600)."""
    path = folder / "principal.json"
    if path.exists():
        data: JSON = json.loads(path.read_text())
        return data
    data = {"tenant_id": str(uuid.uuid4()), "client_id": str(uuid.uuid4()),
            "client_secret": "fake~" + secrets.token_urlsafe(30)}
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return data


# -- long-running operations --------------------------------------------------------------------

@dataclass
class Outcome:
    """How an operation ends: ``Succeeded`` with an optional output, or ``Failed``."""

    status: str = "Succeeded"
    output: Any = None
    error: JSON | None = None


@dataclass
class Operation:
    id: str
    provider: str
    location: str
    subscription: str
    started: str
    #: evaluated when the operation is first reported finished (the second poll)
    finish: Callable[[], Outcome]
    polls: int = 0
    outcome: Outcome | None = None

    def poll(self) -> Outcome | None:
        """None while in progress: the first poll always says InProgress, as a real one may."""
        self.polls += 1
        if self.polls < 2:
            return None
        if self.outcome is None:
            self.outcome = self.finish()
        return self.outcome


# -- state ------------------------------------------------------------------------------------

def _key(*parts: str) -> str:
    return "/".join(p.lower() for p in parts)


class State:
    """Everything the fake knows, behind one lock, saved to ``state.json`` after each change.

    ``resources`` maps a lower-cased resource id to ``{"json": <ARM body>, "x": <the fake's
    own fields>}``; groups and subscriptions are kept apart. Bearer tokens are kept as
    SHA-256 digests only. Operations and the request log live in memory.
    """

    def __init__(self, folder: Path, azurite_url: str) -> None:
        self.folder = folder
        self.azurite_url = azurite_url.rstrip("/")
        self.lock = threading.RLock()
        self.path = folder / "state.json"
        self.data: JSON = {"subscriptions": {}, "groups": {}, "resources": {}, "tokens": {}}
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text()))
        self.operations: dict[str, Operation] = {}
        self.log: list[JSON] = []
        self.faults: list[JSON] = []
        #: the service principal (kept in principal.json, never in state.json)
        self.principal: JSON = principal(folder)

    def save(self) -> None:
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)

    # tokens
    def issue_token(self, lifetime: int = 3600) -> str:
        token = "fake-arm." + uuid.uuid4().hex + uuid.uuid4().hex
        with self.lock:
            digest = hashlib.sha256(token.encode()).hexdigest()
            self.data["tokens"] = {k: v for k, v in self.data["tokens"].items() if v > time.time()}
            self.data["tokens"][digest] = time.time() + lifetime
            self.save()
        return token

    def token_ok(self, token: str) -> bool:
        expiry = self.data["tokens"].get(hashlib.sha256(token.encode()).hexdigest())
        return expiry is not None and expiry > time.time()

    # subscriptions and groups
    def subscription(self, sub: str) -> JSON | None:
        found: JSON | None = self.data["subscriptions"].get(sub.lower())
        return found

    def group(self, sub: str, rg: str) -> JSON | None:
        found: JSON | None = self.data["groups"].get(_key(sub, rg))
        return found

    def require_group(self, sub: str, rg: str) -> JSON:
        if self.subscription(sub) is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        g = self.group(sub, rg)
        if g is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return g

    # resources
    @staticmethod
    def rid(sub: str, rg: str, provider_type: str, name: str) -> str:
        """A resource id in Azure's casing; ``provider_type`` like ``Microsoft.Compute/disks``."""
        g = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider_type}/{name}"
        return g

    def get(self, rid: str) -> JSON | None:
        found: JSON | None = self.data["resources"].get(rid.lower())
        return found

    def put(self, rid: str, body: JSON, x: JSON | None = None) -> JSON:
        with self.lock:
            entry = {"json": body, "x": x if x is not None else {}}
            self.data["resources"][rid.lower()] = entry
            self.save()
            return entry

    def delete(self, rid: str) -> JSON | None:
        with self.lock:
            gone: JSON | None = self.data["resources"].pop(rid.lower(), None)
            self.save()
            return gone

    def in_group(self, sub: str, rg: str) -> list[JSON]:
        prefix = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/".lower()
        return [e for k, e in sorted(self.data["resources"].items()) if k.startswith(prefix)]

    def group_of(self, rid: str) -> tuple[str, str]:
        parts = rid.split("/")
        return parts[2], parts[4]

    def add_operation(self, provider: str, location: str, sub: str,
                      finish: Callable[[], Outcome]) -> Operation:
        op = Operation(str(uuid.uuid4()), provider, location, sub, now_iso(), finish)
        with self.lock:
            self.operations[op.id] = op
        return op


# -- routing -----------------------------------------------------------------------------------

@dataclass
class Ctx:
    """One request as a handler sees it."""

    state: State
    method: str
    path: str
    query: dict[str, str]
    body: Any
    base_url: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return self.query.get("api-version", "")

    def json_body(self) -> JSON:
        if not isinstance(self.body, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not "
                           "be deserialized: a JSON object is required.")
        return self.body

    def lro(self, status: int, body: Any, *, provider: str, location: str,
            finish: Callable[[], Outcome] | None = None) -> Reply:
        """An accepted long-running operation: ``status`` (201/202) with ``body``, an
        ``Azure-AsyncOperation`` to poll and a ``Location`` for the final result, as the
        resource providers answer (the specs' examples' 201/202 responses and headers)."""
        sub = self.params.get("sub") or self.path.split("/")[2]
        op = self.state.add_operation(provider, location, sub, finish or Outcome)
        base = f"{self.base_url}/subscriptions/{sub}/providers/{provider}/locations/{location}"
        v = self.api_version
        if provider == "Microsoft.Network":
            status_url = f"{base}/operations/{op.id}?api-version={v}"
            result_url = f"{base}/operationResults/{op.id}?api-version={v}"
        else:
            status_url = f"{base}/operations/{op.id}?api-version={v}"
            result_url = f"{base}/operations/{op.id}?monitor=true&api-version={v}"
        return Reply(status, body, {"Azure-AsyncOperation": status_url, "Location": result_url})


Handler = Callable[[Ctx], Reply]


class Router:
    """Templates like ``/subscriptions/{sub}/resourceGroups/{rg}`` matched without regard to case."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self.routes.append((method, re.compile(f"^{rx}/?$", re.IGNORECASE), handler))

    def route(self, method: str, template: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(method, template, fn)
            return fn
        return deco

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        allowed = False
        for m, rx, handler in self.routes:
            match = rx.match(path)
            if match:
                if m == method:
                    return handler, match.groupdict()
                allowed = True
        if allowed:
            raise ArmError(405, "MethodNotAllowed",
                           f"The requested method {method} is not allowed for {path}.")
        return None
