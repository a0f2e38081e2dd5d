"""The fake's web application (Starlette, served by uvicorn over HTTPS). Test fake, not Azure.

Three faces on one port:
- a sign-in authority shaped on Microsoft Entra's v2.0 endpoints, enough for MSAL's client
  credentials flow: ``/{tenant}/v2.0/.well-known/openid-configuration`` and
  ``/{tenant}/oauth2/v2.0/token`` (one service principal; a wrong secret gets AADSTS7000215);
- Resource Manager: ``/subscriptions/...``, every call with a bearer token the fake issued
  (else 401 ``AuthenticationFailed``), faults injected on request, every call logged
  (method, path, status; never a token or a SAS);
- control endpoints for tests, ``/_fake/...`` (seed, inject, requests), not part of Azure.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rehost.testkit.azure_arm import compute, network, resources
from rehost.testkit.azure_arm.blobs import Storage
from rehost.testkit.azure_arm.core import JSON, ArmError, Ctx, Reply, Router, State
from rehost.testkit.azure_arm.vm import VmRunner

#: ARM error codes the fault injector answers with
FAULT_CODES = {409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
               503: "ServiceUnavailable", 504: "GatewayTimeout"}


class Fake:
    """State, storage, VMs and routes of one fake."""

    def __init__(self, folder: Path, azurite_url: str, *, accel: str = "tcg") -> None:
        self.folder = folder
        self.state = State(folder, azurite_url)
        self.storage = Storage(azurite_url)
        self.runner = VmRunner(folder, self.storage, accel=accel)
        self.router = Router()
        resources.register(self.router)
        network.register(self.router)
        compute.register(self.router, self.storage, self.runner)
        self._ops = Router()
        ops = "/subscriptions/{sub}/providers/{provider}/locations/{location}"
        self._ops.add("GET", ops + "/operations/{op}", self._operation)
        self._ops.add("GET", ops + "/operationResults/{op}", self._operation_result)
        self._log_lock = threading.Lock()

    # -- control ---------------------------------------------------------------------------------

    def seed(self, spec: JSON) -> JSON:
        """A subscription (its locations), a resource group, virtual networks, a storage account."""
        sub, rg = str(spec["subscription"]), str(spec["resource_group"])
        location = str(spec["location"]).lower()
        st = self.state
        with st.lock:
            subs = st.data["subscriptions"]
            entry = subs.setdefault(sub.lower(), {"id": sub, "locations": []})
            for loc in [location, *spec.get("locations", []), "westeurope", "northeurope", "eastus"]:
                if loc.lower() not in entry["locations"]:
                    entry["locations"].append(loc.lower())
            st.data["groups"][f"{sub}/{rg}".lower()] = {"name": rg, "location": location,
                                                         "read_only": bool(spec.get("read_only")),
                                                         "tags": spec.get("tags") or {}}
            vnets: JSON = spec.get("vnets") or {}
            for name, v in vnets.items():
                body = network.vnet_body(sub, rg, name, str(v.get("location") or location),
                                         v["address_prefix"], dict(v.get("subnets") or {}),
                                         list(v.get("peerings") or []))
                st.put(body["id"], body)
            # a peering is seen from both sides, as Azure shows a connected pair
            for name, v in vnets.items():
                for peer in v.get("peerings") or []:
                    other = st.get(st.rid(sub, rg, "Microsoft.Network/virtualNetworks", peer))
                    if other is None:
                        continue
                    remote = st.rid(sub, rg, "Microsoft.Network/virtualNetworks", name)
                    peerings = other["json"]["properties"]["virtualNetworkPeerings"]
                    if not any(p["properties"]["remoteVirtualNetwork"]["id"].lower() == remote.lower()
                               for p in peerings):
                        mirror = network.vnet_body(sub, rg, peer, other["json"]["location"], "0.0.0.0/0", {},
                                                   [name])["properties"]["virtualNetworkPeerings"]
                        peerings.extend(mirror)
                        st.put(other["json"]["id"], other["json"], other["x"])
            if spec.get("storage_account"):
                body = resources.storage_account_body(sub, rg, str(spec["storage_account"]), location,
                                                      st.azurite_url)
                st.put(body["id"], body)
            st.save()
        return {"subscription": sub, "resource_group": rg}

    def inject(self, spec: JSON) -> JSON:
        status = int(spec["status"])
        with self.state.lock:
            self.state.faults.append({"status": status, "method": (spec.get("method") or "").upper() or None,
                                      "path_contains": spec.get("path_contains"),
                                      "times": int(spec.get("times", 1)),
                                      "retry_after": spec.get("retry_after")})
        return {"faults": len(self.state.faults)}

    def _fault(self, method: str, path: str) -> ArmError | None:
        with self.state.lock:
            for f in self.state.faults:
                if f["method"] and f["method"] != method:
                    continue
                if f["path_contains"] and f["path_contains"].lower() not in path.lower():
                    continue
                f["times"] -= 1
                if f["times"] <= 0:
                    self.state.faults.remove(f)
                status = f["status"]
                code = FAULT_CODES.get(status, HTTPStatus(status).phrase.replace(" ", ""))
                headers = {}
                if f["retry_after"] is not None:
                    headers["Retry-After"] = str(f["retry_after"])
                elif status == 429:
                    headers["Retry-After"] = "1"
                return ArmError(status, code, f"Injected by the test fake: {code} for {method} {path}.",
                                headers)
        return None

    # -- operations --------------------------------------------------------------------------------

    def _operation_entry(self, ctx: Ctx) -> Any:
        op = self.state.operations.get(ctx.params["op"])
        if op is None or op.subscription.lower() != ctx.params["sub"].lower():
            raise ArmError(404, "NotFound", f"The operation '{ctx.params['op']}' was not found.")
        return op

    def _operation(self, ctx: Ctx) -> Reply:
        if ctx.query.get("monitor", "").lower() == "true":
            return self._operation_result(ctx)
        # Shape: the Azure-AsyncOperation status resource (ARM's async operations contract):
        # {"name", "status", "startTime"[, "endTime", "properties": {"output"}, "error"]}
        op = self._operation_entry(ctx)
        with self.state.lock:
            outcome = op.poll()
        body: JSON = {"name": op.id, "startTime": op.started}
        if outcome is None:
            return Reply(200, {**body, "status": "InProgress"}, {"Retry-After": _retry_after()})
        body.update(status=outcome.status, endTime=op.started)
        if outcome.output is not None:
            body["properties"] = {"output": outcome.output}
        if outcome.error is not None:
            body["error"] = outcome.error
        return Reply(200, body)

    def _operation_result(self, ctx: Ctx) -> Reply:
        # The Location (monitor) URL: 202 while running, then the operation's result (200)
        op = self._operation_entry(ctx)
        with self.state.lock:
            outcome = op.poll()
        if outcome is None:
            return Reply(202, None, {"Location": f"{ctx.base_url}{ctx.path}?{_query(ctx.query)}",
                                     "Retry-After": _retry_after()})
        if outcome.status != "Succeeded":
            raise ArmError(400, str((outcome.error or {}).get("code", "OperationFailed")),
                           str((outcome.error or {}).get("message", "The operation failed.")))
        return Reply(200, outcome.output) if outcome.output is not None else Reply(200, None)

    # -- ARM ---------------------------------------------------------------------------------------

    def arm(self, method: str, path: str, query: dict[str, str], body: Any, base_url: str,
            authorization: str) -> Reply:
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if not token or not self.state.token_ok(token):
            what = ("The access token is invalid or expired." if token else
                    "Authentication failed. The 'Authorization' header is missing.")
            tenant = self.state.principal["tenant_id"]
            raise ArmError(401, "InvalidAuthenticationToken" if token else "AuthenticationFailed", what,
                           {"WWW-Authenticate": f'Bearer authorization_uri="{base_url}/{tenant}", '
                                                'error="invalid_token"'})
        if not query.get("api-version"):
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter "
                           "(?api-version=) is required for all requests.")
        fault = self._fault(method, path)
        if fault is not None:
            raise fault
        ctx = Ctx(self.state, method, path, query, body, base_url)
        for router in (self._ops, self.router):
            found = router.find(method, path)
            if found is not None:
                handler, ctx.params = found
                # one request at a time: handlers change resources in place, and a test fake
                # gains nothing from running them in parallel
                with self.state.lock:
                    return handler(ctx)
        raise ArmError(404, "NotFound" if "/providers/" in path else "ResourceNotFound",
                       f"The fake has no resource or operation at {method} {path}.")

    def record(self, method: str, path: str, status: int, api_version: str) -> None:
        with self._log_lock:
            self.state.log.append({"method": method, "path": path, "status": status,
                                   "api_version": api_version})


def _retry_after() -> str:
    from rehost.testkit.azure_arm.core import LRO_RETRY_AFTER

    return LRO_RETRY_AFTER


def _query(q: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(q)


def _json_response(reply: Reply) -> Response:
    if reply.body is None:
        return Response(status_code=reply.status, headers=reply.headers)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def build_app(fake: Fake) -> Starlette:
    async def openid(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = f"{request.url.scheme}://{request.url.netloc}/{tenant}"
        return JSONResponse({
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0", "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU", "cloud_instance_name": "rehost-test-fake",
        })

    async def token(request: Request) -> Response:
        # Shape: Microsoft identity platform, client credentials grant (token response and
        # the AADSTS error responses: error, error_description, error_codes, trace_id, ...)
        form = dict(parse_qsl((await request.body()).decode()))
        p = fake.state.principal
        tenant = request.path_params["tenant"]

        def err(status: int, error: str, code: int, text: str) -> Response:
            fake.record("POST", request.url.path, status, "")
            return JSONResponse({"error": error, "error_description": f"AADSTS{code}: {text}",
                                 "error_codes": [code], "timestamp": "", "trace_id": secrets.token_hex(8),
                                 "correlation_id": secrets.token_hex(8)}, status_code=status)

        if tenant.lower() != p["tenant_id"].lower():
            return err(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return err(400, "unsupported_grant_type", 70003, "The fake supports client_credentials only.")
        if form.get("client_id", "").lower() != p["client_id"].lower():
            return err(400, "unauthorized_client", 700016, f"Application with identifier "
                       f"'{form.get('client_id')}' was not found in the directory '{tenant}'.")
        if not secrets.compare_digest(form.get("client_secret", ""), p["client_secret"]):
            return err(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                       f"being sent in the request is the client secret value, not the client secret ID, "
                       f"for a secret added to app '{p['client_id']}'.")
        fake.record("POST", request.url.path, 200, "")
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                             "access_token": fake.state.issue_token()})

    async def arm(request: Request) -> Response:
        raw = await request.body()
        query = dict(request.query_params)
        path = request.url.path
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        base = f"{request.url.scheme}://{request.url.netloc}"
        try:
            reply = await anyio.to_thread.run_sync(
                lambda: fake.arm(request.method, path, query, body, base,
                                 request.headers.get("authorization", "")))
        except ArmError as e:
            reply = Reply(e.status, e.body(), e.headers)
        except Exception as e:  # a bug in the fake: say so in ARM's shape
            reply = Reply(500, {"error": {"code": "FakeInternalError",
                                          "message": f"{type(e).__name__}: {e}"}})
            import traceback

            traceback.print_exc()
        fake.record(request.method, path, reply.status, query.get("api-version", ""))
        return _json_response(reply)

    async def control_seed(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(fake.seed, await request.json()))

    async def control_inject(request: Request) -> Response:
        return JSONResponse(fake.inject(await request.json()))

    async def control_requests(request: Request) -> Response:
        with fake._log_lock:
            return JSONResponse(list(fake.state.log))

    async def control_clear(request: Request) -> Response:
        with fake.state.lock:
            fake.state.faults.clear()
        return JSONResponse({"faults": 0})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "fake": "rehost Resource Manager test fake (not Azure)"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(fake.runner.stop_all)

    methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]
    return Starlette(routes=[
        Route("/_fake/health", health),
        Route("/_fake/seed", control_seed, methods=["POST"]),
        Route("/_fake/inject", control_inject, methods=["POST"]),
        Route("/_fake/clear-faults", control_clear, methods=["POST"]),
        Route("/_fake/requests", control_requests),
        Route("/subscriptions/{rest:path}", arm, methods=methods),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
    ], lifespan=lifespan)
