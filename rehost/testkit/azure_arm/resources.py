"""Microsoft.Resources, Microsoft.Authorization and Microsoft.Storage in the fake (test fake,
not Azure): resource groups, locations, resources by tag, permissions, storage accounts."""

from __future__ import annotations

import re
from typing import Any

from rehost.testkit.azure_arm.core import JSON, ArmError, Ctx, Reply, Router, not_found
from rehost.testkit.azurite import ACCOUNT_KEY

#: what the fake answers to a read-only principal: the built-in Reader role's actions
READER_ACTIONS = ["*/read"]

DISPLAY = {"westeurope": ("West Europe", "Europe"), "northeurope": ("North Europe", "Europe"),
           "eastus": ("East US", "US"), "westus2": ("West US 2", "US"),
           "uksouth": ("UK South", "Europe"), "swedencentral": ("Sweden Central", "Europe")}


def location_body(sub: str, name: str) -> JSON:
    # Shape: Subscriptions_ListLocations example (GetLocations.json, Microsoft.Resources/subscriptions)
    display, geo = DISPLAY.get(name, (name, "Other"))
    return {"id": f"/subscriptions/{sub}/locations/{name}", "name": name, "type": "Region",
            "displayName": display, "regionalDisplayName": f"({geo}) {display}",
            "metadata": {"regionType": "Physical", "regionCategory": "Recommended", "geographyGroup": geo}}


def register(r: Router) -> None:
    @r.route("GET", "/subscriptions/{sub}/resourcegroups/{rg}")
    def get_group(ctx: Ctx) -> Reply:
        # Shape: ResourceGroups_Get (the ResourceGroup model: id, name, type, location, properties)
        g = ctx.state.require_group(ctx.params["sub"], ctx.params["rg"])
        sub = ctx.state.subscription(ctx.params["sub"])
        assert sub is not None
        return Reply(200, {"id": f"/subscriptions/{sub['id']}/resourceGroups/{g['name']}", "name": g["name"],
                           "type": "Microsoft.Resources/resourceGroups", "location": g["location"],
                           "tags": g.get("tags", {}), "properties": {"provisioningState": "Succeeded"}})

    @r.route("GET", "/subscriptions/{sub}/locations")
    def locations(ctx: Ctx) -> Reply:
        # Shape: Subscriptions_ListLocations ({"value": [Location]})
        sub = ctx.state.subscription(ctx.params["sub"])
        if sub is None:
            raise ArmError(404, "SubscriptionNotFound",
                           f"The subscription '{ctx.params['sub']}' could not be found.")
        return Reply(200, {"value": [location_body(sub["id"], n) for n in sub["locations"]]})

    @r.route("GET", "/subscriptions/{sub}/resourcegroups/{rg}/resources")
    def list_resources(ctx: Ctx) -> Reply:
        # Shape: Resources_ListByResourceGroup ({"value": [GenericResourceExpanded]}); $filter
        # on tagName/tagValue as documented ("tagName eq 'k' and tagValue eq 'v'")
        ctx.state.require_group(ctx.params["sub"], ctx.params["rg"])
        want = _tag_filter(ctx.query.get("$filter", ""))
        out = []
        for e in ctx.state.in_group(ctx.params["sub"], ctx.params["rg"]):
            body = e["json"]
            tags = body.get("tags") or {}
            if want is not None:
                k, v = want
                match = {tk.lower(): tv for tk, tv in tags.items()}
                if k.lower() not in match or (v is not None and match[k.lower()] != v):
                    continue
            out.append({"id": body["id"], "name": body["name"], "type": body["type"],
                        "location": body.get("location"), "tags": tags,
                        **({"sku": body["sku"]} if "sku" in body else {}),
                        **({"managedBy": body["managedBy"]} if body.get("managedBy") else {})})
        return Reply(200, {"value": out})

    @r.route("GET", "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Authorization/permissions")
    def permissions(ctx: Ctx) -> Reply:
        # Shape: Permissions_ListForResourceGroup (GetPermissions.json: {"value": [Permission]})
        g = ctx.state.require_group(ctx.params["sub"], ctx.params["rg"])
        actions = READER_ACTIONS if g.get("read_only") else ["*"]
        return Reply(200, {"value": [{"actions": actions, "notActions": [], "dataActions": [],
                                      "notDataActions": []}]})

    storage = "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Storage/storageAccounts/{name}"

    @r.route("GET", storage)
    def storage_account(ctx: Ctx) -> Reply:
        # Shape: StorageAccounts_GetProperties (StorageAccountGetProperties.json), reduced to
        # the fields a client reads; primaryEndpoints.blob is Azurite's account URL
        return Reply(200, _account(ctx)["json"])

    @r.route("POST", storage + "/listKeys")
    def list_keys(ctx: Ctx) -> Reply:
        # Shape: StorageAccounts_ListKeys (StorageAccountListKeys.json); both keys are
        # Azurite's well-known development key
        _account(ctx)
        return Reply(200, {"keys": [{"keyName": "key1", "value": ACCOUNT_KEY, "permissions": "FULL"},
                                    {"keyName": "key2", "value": ACCOUNT_KEY, "permissions": "FULL"}]})


def _account(ctx: Ctx) -> JSON:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    e = ctx.state.get(ctx.state.rid(sub, rg, "Microsoft.Storage/storageAccounts", name))
    if e is None:
        raise not_found("Microsoft.Storage/storageAccounts", name, rg)
    return e


_TAG = re.compile(r"^\s*tagname\s+eq\s+'(?P<k>[^']*)'(\s+and\s+tagvalue\s+eq\s+'(?P<v>[^']*)')?\s*$", re.I)


def _tag_filter(text: str) -> tuple[str, str | None] | None:
    if not text.strip():
        return None
    m = _TAG.match(text)
    if m is None:
        raise ArmError(400, "InvalidFilterInQueryString",
                       f"Invalid $filter '{text}' specified in the query string (the fake knows "
                       "tagName eq '..' [and tagValue eq '..'])")
    return m.group("k"), m.group("v")


def storage_account_body(sub: str, rg: str, name: str, location: str, blob_url: str) -> dict[str, Any]:
    rid = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{name}"
    return {"id": rid, "name": name, "type": "Microsoft.Storage/storageAccounts", "location": location,
            "kind": "StorageV2", "sku": {"name": "Standard_LRS", "tier": "Standard"}, "tags": {},
            "properties": {"provisioningState": "Succeeded", "primaryLocation": location,
                           "statusOfPrimary": "available", "accessTier": "Hot",
                           "supportsHttpsTrafficOnly": False,
                           "primaryEndpoints": {"blob": blob_url.rstrip("/") + "/"}}}
