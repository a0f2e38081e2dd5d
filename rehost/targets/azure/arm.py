"""The Azure target's Resource Manager client: a thin layer over the Azure SDKs.

``azure-mgmt-compute``, ``azure-mgmt-network``, ``azure-mgmt-resource`` and ``azure-identity``
are imported when an ``Arm`` or a credential is made, not with this module: each costs
0.2-0.35 s, and most rehost commands never talk to Azure. The SDKs are used unchanged; their
requests and answers are the REST API's, and this module reads the answers in their wire
form (``model.as_dict()``, camelCase as the REST specs spell them).

Endpoints (``ArmEndpoints``) are configurable for another cloud or for rehost's test fake
(``rehost.testkit.azure_arm``, which production code never imports): ``base_url`` is the
Resource Manager endpoint, the token scope is ``<endpoint>/.default``, the sign-in authority
is ``authority_host``, and ``ca_bundle`` (a PEM file) is what ``connection_verify`` trusts for
both (azure-core's RequestsTransport takes it from the client's keyword arguments).

Retries: 408, 429, 500, 502, 503 and 504 are retried for every method (the SDK's default
policy skips POST on 429/502), ``retries`` times, waiting the server's Retry-After (at most
60 s) or ``backoff`` seconds doubling (at most 30 s). Long-running operations (disks, NICs,
NSGs, VMs, access grants) are polled by the SDK's ARM pollers as ARM says (Azure-AsyncOperation,
Location, Retry-After).

Errors: a 404 from a getter is ``None``; any other failure is ``BackendError`` naming the
operation, the resource and Azure's error code and message, passed through ``blob.redact``
(no query strings, no ``sig=``, never the client secret). A disk's access SAS is a secret:
``grant_disk_access`` returns it and nothing here logs it or puts it in an error; the boot
diagnostics SAS never leaves ``serial_log``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from rehost.errors import BackendError
from rehost.targets.azure.blob import RETRY_STATUSES, _guard_logs, redact
from rehost.targets.azure.sizing import VmSize

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

T = TypeVar("T")

#: api-versions for the calls made without a typed SDK operation
LOCATIONS_API = "2022-12-01"
PERMISSIONS_API = "2022-04-01"
STORAGE_API = "2023-05-01"
#: sign-in hosts of Microsoft's clouds: MSAL's instance discovery knows them; any other
#: authority (a private one, the test fake) is used as given
KNOWN_AUTHORITIES = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
                     "login.partner.microsoftonline.cn")
#: how long a poller waits between polls when ARM sends no Retry-After
POLL_INTERVAL = 2.0


@dataclass(frozen=True)
class ArmEndpoints:
    resource_manager: str = "https://management.azure.com"
    authority_host: str = "https://login.microsoftonline.com"
    #: PEM file of CAs to trust (the test fake's CA); None: the system's trust store
    ca_bundle: str | None = None


def _secret() -> str:
    return os.environ.get("AZURE_CLIENT_SECRET", "")


def credential(tenant_id: str | None, client_id: str | None, endpoints: ArmEndpoints) -> TokenCredential:
    """A service principal when ``AZURE_CLIENT_SECRET`` is in the environment and the tenant
    and client ids are known (from the arguments, else ``AZURE_TENANT_ID``/``AZURE_CLIENT_ID``),
    else ``DefaultAzureCredential`` (environment, managed identity, Azure CLI login, ...) on
    the same authority. The secret is read from the environment only, never stored or logged."""
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    tenant = tenant_id or os.environ.get("AZURE_TENANT_ID")
    client = client_id or os.environ.get("AZURE_CLIENT_ID")
    authority = endpoints.authority_host.rstrip("/")
    kwargs: dict[str, Any] = {"authority": authority}
    if endpoints.ca_bundle:
        kwargs["connection_verify"] = endpoints.ca_bundle
    if urlsplit(authority).hostname not in KNOWN_AUTHORITIES:
        kwargs["disable_instance_discovery"] = True
    secret = _secret()
    if secret and tenant and client:
        return ClientSecretCredential(tenant, client, secret, **kwargs)
    return DefaultAzureCredential(**kwargs)


# -- values -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceGroup:
    name: str
    id: str
    location: str


@dataclass(frozen=True)
class Subnet:
    name: str
    id: str
    address_prefix: str


@dataclass(frozen=True)
class VirtualNetwork:
    id: str
    name: str
    location: str
    address_prefixes: list[str]
    subnets: list[Subnet]
    #: ids of the virtual networks this one is peered with
    peered_ids: list[str]


@dataclass(frozen=True)
class StorageAccount:
    id: str
    name: str
    location: str
    blob_endpoint: str


def _action_rx(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$", re.IGNORECASE)


@dataclass(frozen=True)
class PermissionSet:
    """One entry of ARM's permissions list (one role assignment's role)."""

    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()

    def allows(self, action: str) -> bool:
        return (any(_action_rx(a).match(action) for a in self.actions)
                and not any(_action_rx(a).match(action) for a in self.not_actions))


@dataclass(frozen=True)
class Permissions:
    """What the credential may do in a resource group (``Microsoft.Authorization/permissions``)."""

    sets: tuple[PermissionSet, ...]

    def allows(self, action: str) -> bool:
        """True if some role allows ``action`` (wildcards ``*``, without regard to case) and
        that role's notActions do not take it away."""
        return any(s.allows(action) for s in self.sets)


@dataclass(frozen=True)
class ManagedDisk:
    id: str
    name: str
    #: the disk's diskState (Unattached, Attached, ReadyToUpload, ActiveUpload, ActiveSAS, ...),
    #: or "Failed" when its provisioning failed
    state: str
    size_bytes: int
    #: Hyper-V generation, "V1" or "V2"
    generation: str
    tags: dict[str, str] = field(default_factory=dict)
    provisioning_state: str = ""
    managed_by: str = ""


@dataclass(frozen=True)
class Nic:
    id: str
    name: str
    private_ip: str
    vm_id: str = ""


@dataclass(frozen=True)
class Vm:
    id: str
    name: str
    size: str
    #: from the instance view: running, stopped, deallocated, starting, ... ("" if not known)
    power_state: str
    tags: dict[str, str]
    os_disk_id: str
    data_disk_ids: list[str]
    nic_ids: list[str]
    provisioning_state: str = ""


# -- the client -------------------------------------------------------------------------------------

def _retry_policy(retries: int, backoff: float) -> Any:
    from azure.core.pipeline.policies import RetryPolicy

    class ArmRetry(RetryPolicy):  # type: ignore[misc,type-arg]
        """408/429/5xx retried for every method, Retry-After honoured up to 60 s."""

        def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
            return bool(settings["total"]) and response.http_response.status_code in RETRY_STATUSES

        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(60.0, float(after))

    return ArmRetry(retry_total=retries, retry_status=retries, retry_connect=retries, retry_read=retries,
                    retry_backoff_factor=backoff, retry_backoff_max=30)


def _raw(model: Any) -> dict[str, Any]:
    """An SDK model in its wire form (camelCase keys, as the REST API answers)."""
    if model is None:
        return {}
    if isinstance(model, dict):
        return model
    data: dict[str, Any] = model.as_dict()
    return data


def _name(rid: str) -> str:
    return rid.rstrip("/").rsplit("/", 1)[-1]


class Arm:
    """Resource Manager calls for one subscription (see the module's docstring)."""

    def __init__(self, subscription: str, credential: TokenCredential, endpoints: ArmEndpoints, *,
                 retries: int = 6, backoff: float = 0.5) -> None:
        _guard_logs()
        self.subscription = subscription
        self.credential = credential
        self.endpoints = endpoints
        self._retries = retries
        self._backoff = backoff

    def _options(self) -> dict[str, Any]:
        rm = self.endpoints.resource_manager.rstrip("/")
        options: dict[str, Any] = {"base_url": rm, "credential_scopes": [rm + "/.default"],
                                   "retry_policy": _retry_policy(self._retries, self._backoff),
                                   "polling_interval": POLL_INTERVAL}
        if self.endpoints.ca_bundle:
            options["connection_verify"] = self.endpoints.ca_bundle
        return options

    @cached_property
    def _compute(self) -> Any:
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, self.subscription, **self._options())

    @cached_property
    def _network(self) -> Any:
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, self.subscription, **self._options())

    @cached_property
    def _resources(self) -> Any:
        from azure.mgmt.resource.resources import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.subscription, **self._options())

    def _rid(self, rg: str, kind: str, name: str) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/{kind}/{name}"

    # -- calling -------------------------------------------------------------------------------

    def _call(self, what: str, resource: str, fn: Callable[[], T]) -> T:
        """Run one SDK call (an LRO's ``.result()`` included); a failure is a ``BackendError``
        saying what, on what, and Azure's error code and message."""
        return self._maybe(what, resource, fn, missing_ok=False)  # type: ignore[return-value]

    def _maybe(self, what: str, resource: str, fn: Callable[[], T], *, missing_ok: bool = True) -> T | None:
        """``_call``, where a 404 (the resource or its group is not there) is None."""
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        try:
            return fn()
        except ClientAuthenticationError as e:
            raise BackendError(self._text(f"{what} {resource}: sign-in failed: {_first(e)}"),
                               retryable=False) from None
        except HttpResponseError as e:
            status = e.status_code
            if status == 404 and missing_ok:
                return None
            code, message = _error(e)
            raise BackendError(self._text(f"{what} {resource}: {code}: {message}"
                                          + (f" (HTTP {status})" if status else "")),
                               retryable=status is None or status in RETRY_STATUSES) from None
        except AzureError as e:
            raise BackendError(self._text(f"{what} {resource}: {type(e).__name__}: {_first(e)}"),
                               retryable=True) from None

    def _text(self, text: str) -> str:
        return redact(text, _secret())

    def _send(self, method: str, path: str, api_version: str) -> Any:
        """A call the SDKs have no operation for, through the resource client's pipeline
        (same authentication, retries, trust). Returns the JSON answer."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.core.rest import HttpRequest
        from azure.mgmt.core.exceptions import ARMErrorFormat

        sep = "&" if "?" in path else "?"
        url = path if "api-version=" in path else f"{path}{sep}api-version={api_version}"
        response = self._resources.send_request(HttpRequest(method, url))
        if response.status_code == 404:
            raise ResourceNotFoundError(response=response, error_format=ARMErrorFormat)
        if response.status_code >= 400:
            raise HttpResponseError(response=response, error_format=ARMErrorFormat)
        return response.json() if response.content else None

    def _pages(self, path: str, api_version: str) -> Iterator[dict[str, Any]]:
        base = self.endpoints.resource_manager.rstrip("/")
        url: str | None = path
        while url:
            page = self._send("GET", url[len(base):] if url.startswith(base) else url, api_version) or {}
            yield from page.get("value", [])
            url = page.get("nextLink")

    # -- resource groups, locations, permissions, tags --------------------------------------------

    def resource_group(self, rg: str) -> ResourceGroup | None:
        g = self._maybe("read resource group", rg, lambda: self._resources.resource_groups.get(rg))
        if g is None:
            return None
        raw = _raw(g)
        return ResourceGroup(raw["name"], raw["id"], raw["location"])

    def locations(self) -> list[str]:
        """The subscription's physical regions (``westeurope``, ...)."""
        path = f"/subscriptions/{self.subscription}/locations"
        found = self._call("list locations of subscription", self.subscription,
                           lambda: list(self._pages(path, LOCATIONS_API)))
        return [str(loc["name"]) for loc in found or []
                if (loc.get("metadata") or {}).get("regionType", "Physical") == "Physical"]

    def permissions(self, rg: str) -> Permissions:
        path = (f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/"
                "Microsoft.Authorization/permissions")
        found = self._call("list permissions in resource group", rg,
                           lambda: list(self._pages(path, PERMISSIONS_API)))
        return Permissions(tuple(PermissionSet(tuple(p.get("actions") or ()),
                                               tuple(p.get("notActions") or ()))
                                 for p in found or []))

    def tagged(self, rg: str, key: str, value: str) -> list[str]:
        """Ids of the resources in ``rg`` that carry the tag ``key=value``."""
        flt = f"tagName eq '{_odata(key)}' and tagValue eq '{_odata(value)}'"
        found = self._maybe("list resources tagged", f"{key}={value} in {rg}", lambda: [
            _raw(r)["id"] for r in self._resources.resources.list_by_resource_group(rg, filter=flt)])
        return list(found or [])

    # -- networks -----------------------------------------------------------------------------------

    def virtual_network(self, rg: str, name: str) -> VirtualNetwork | None:
        v = self._maybe("read virtual network", f"{rg}/{name}",
                       lambda: self._network.virtual_networks.get(rg, name))
        if v is None:
            return None
        raw = _raw(v)
        props = raw.get("properties") or {}
        subnets = []
        for s in props.get("subnets") or []:
            sp = s.get("properties") or {}
            prefix = sp.get("addressPrefix") or (sp.get("addressPrefixes") or [""])[0]
            subnets.append(Subnet(s["name"], s["id"], str(prefix)))
        peered = []
        for p in props.get("virtualNetworkPeerings") or []:
            remote = ((p.get("properties") or {}).get("remoteVirtualNetwork") or {}).get("id")
            if remote:
                peered.append(str(remote))
        prefixes = list((props.get("addressSpace") or {}).get("addressPrefixes") or [])
        return VirtualNetwork(raw["id"], raw["name"], raw["location"], prefixes, subnets, peered)

    def create_nsg(self, rg: str, name: str, location: str, tags: dict[str, str]) -> str:
        """A network security group with no rules beyond Azure's defaults; returns its id."""
        body = {"location": location, "tags": dict(tags), "properties": {"securityRules": []}}
        made = self._call("create network security group", f"{rg}/{name}", lambda: self._network
                          .network_security_groups.begin_create_or_update(rg, name, body).result())
        return str(_raw(made)["id"])

    def delete_nsg(self, rg: str, name: str) -> None:
        self._maybe("delete network security group", f"{rg}/{name}", lambda: self._network
                   .network_security_groups.begin_delete(rg, name).result())

    def create_nic(self, rg: str, name: str, location: str, subnet_id: str, nsg_id: str | None,
                   private_ip: str | None, tags: dict[str, str]) -> Nic:
        """A NIC on ``subnet_id``: a static ``private_ip`` (Azure refuses one outside the subnet
        or in use), else the next free address."""
        ipc: dict[str, Any] = {"subnet": {"id": subnet_id},
                               "privateIPAllocationMethod": "Static" if private_ip else "Dynamic"}
        if private_ip:
            ipc["privateIPAddress"] = private_ip
        props: dict[str, Any] = {"ipConfigurations": [{"name": "ipconfig1", "properties": ipc}]}
        if nsg_id:
            props["networkSecurityGroup"] = {"id": nsg_id}
        body = {"location": location, "tags": dict(tags), "properties": props}
        made = self._call("create network interface", f"{rg}/{name}", lambda: self._network
                          .network_interfaces.begin_create_or_update(rg, name, body).result())
        return _nic(_raw(made))

    def nic(self, rg: str, name: str) -> Nic | None:
        n = self._maybe("read network interface", f"{rg}/{name}",
                       lambda: self._network.network_interfaces.get(rg, name))
        return None if n is None else _nic(_raw(n))

    def delete_nic(self, rg: str, name: str) -> None:
        self._maybe("delete network interface", f"{rg}/{name}", lambda: self._network
                   .network_interfaces.begin_delete(rg, name).result())

    # -- storage ------------------------------------------------------------------------------------

    def storage_account(self, rg: str, name: str) -> StorageAccount | None:
        rid = self._rid(rg, "Microsoft.Storage/storageAccounts", name)
        a = self._maybe("read storage account", f"{rg}/{name}",
                       lambda: self._resources.resources.get_by_id(rid, api_version=STORAGE_API))
        if a is None:
            return None
        raw = _raw(a)
        blob = str(((raw.get("properties") or {}).get("primaryEndpoints") or {}).get("blob") or "")
        return StorageAccount(raw["id"], raw["name"], raw["location"], blob)

    def storage_key(self, rg: str, name: str) -> str:
        """The storage account's first key (a secret: never logged, never stored)."""
        path = self._rid(rg, "Microsoft.Storage/storageAccounts", name) + "/listKeys"
        answer = self._call("list the keys of storage account", f"{rg}/{name}",
                            lambda: self._send("POST", path, STORAGE_API))
        keys = (answer or {}).get("keys") or []
        if not keys:
            raise BackendError(f"list the keys of storage account {rg}/{name}: no key returned")
        return str(keys[0]["value"])

    # -- sizes ----------------------------------------------------------------------------------------

    def vm_sizes(self, location: str) -> list[VmSize]:
        """The VM sizes offered in ``location`` (``vmSizes``) with the Hyper-V generations each
        supports (``Microsoft.Compute/skus``); sizes restricted for this subscription are left out."""
        sizes = self._call("list VM sizes in", location,
                           lambda: [_raw(s) for s in self._compute.virtual_machine_sizes.list(location)])
        skus = self._call("list VM SKUs in", location, lambda: [
            _raw(s) for s in self._compute.resource_skus.list(filter=f"location eq '{location}'")])
        gens: dict[str, tuple[str, ...]] = {}
        restricted: set[str] = set()
        for sku in skus or []:
            if str(sku.get("resourceType", "")).lower() != "virtualmachines":
                continue
            name = str(sku.get("name", "")).lower()
            caps = {str(c.get("name")): str(c.get("value")) for c in sku.get("capabilities") or []}
            gens[name] = tuple(g.strip() for g in caps.get("HyperVGenerations", "V1").split(",") if g.strip())
            if any(str(r.get("type")) == "Location" for r in sku.get("restrictions") or []):
                restricted.add(name)
        return [VmSize(str(s["name"]), int(s["numberOfCores"]), int(s["memoryInMB"]),
                       int(s["maxDataDiskCount"]), gens.get(str(s["name"]).lower(), ("V1",)))
                for s in sizes or [] if str(s["name"]).lower() not in restricted]

    # -- disks -----------------------------------------------------------------------------------------

    def _create_disk(self, rg: str, name: str, location: str, creation: dict[str, Any], generation: str,
                     os_type: str | None, sku: str, tags: dict[str, str]) -> ManagedDisk:
        props: dict[str, Any] = {"creationData": creation, "hyperVGeneration": generation}
        if os_type:
            props["osType"] = os_type
        body = {"location": location, "tags": dict(tags), "sku": {"name": sku}, "properties": props}
        made = self._call(f"create managed disk ({creation['createOption']})", f"{rg}/{name}",
                          lambda: self._compute.disks.begin_create_or_update(rg, name, body).result())
        return _disk(_raw(made))

    def create_disk_import(self, rg: str, name: str, location: str, source_uri: str, storage_account_id: str,
                           *, generation: str, os_type: str | None, sku: str,
                           tags: dict[str, str]) -> ManagedDisk:
        """A managed disk imported from a page blob holding a fixed VHD (not a ``?snapshot=``
        URL: Azure documents Import from a blob). ``source_uri`` carries no SAS: Azure reads it
        through ``storage_account_id``."""
        creation = {"createOption": "Import", "sourceUri": source_uri, "storageAccountId": storage_account_id}
        return self._create_disk(rg, name, location, creation, generation, os_type, sku, tags)

    def create_disk_upload(self, rg: str, name: str, location: str, upload_bytes: int, *, generation: str,
                           os_type: str | None, sku: str, tags: dict[str, str]) -> ManagedDisk:
        """An empty managed disk opened for upload: ``upload_bytes`` = padded size + 512."""
        creation = {"createOption": "Upload", "uploadSizeBytes": int(upload_bytes)}
        return self._create_disk(rg, name, location, creation, generation, os_type, sku, tags)

    def grant_disk_access(self, rg: str, name: str, write: bool, seconds: int = 3600) -> str:
        """A SAS URL for the disk's bytes (write: for an upload). A secret: the caller must not
        log or store it."""
        body = {"access": "Write" if write else "Read", "durationInSeconds": int(seconds)}
        got = self._call("grant access to managed disk", f"{rg}/{name}",
                         lambda: self._compute.disks.begin_grant_access(rg, name, body).result())
        sas = str(_raw(got).get("accessSAS") or "")
        if not sas:
            raise BackendError(f"grant access to managed disk {rg}/{name}: Azure returned no SAS")
        return sas

    def revoke_disk_access(self, rg: str, name: str) -> None:
        self._call("revoke access to managed disk", f"{rg}/{name}",
                   lambda: self._compute.disks.begin_revoke_access(rg, name).result())

    def disk(self, rg: str, name: str) -> ManagedDisk | None:
        d = self._maybe("read managed disk", f"{rg}/{name}", lambda: self._compute.disks.get(rg, name))
        return None if d is None else _disk(_raw(d))

    def delete_disk(self, rg: str, name: str) -> None:
        self._maybe("delete managed disk", f"{rg}/{name}",
                   lambda: self._compute.disks.begin_delete(rg, name).result())

    # -- VMs -------------------------------------------------------------------------------------------

    def create_vm(self, rg: str, name: str, location: str, size: str, os_disk_id: str,
                  data_disk_ids: Sequence[str], nic_id: str, *, os_type: str, tags: dict[str, str]) -> Vm:
        """A VM from attached managed disks, with boot diagnostics on (managed storage). Azure
        starts it as it makes it."""
        body = {"location": location, "tags": dict(tags), "properties": {
            "hardwareProfile": {"vmSize": size},
            "storageProfile": {
                "osDisk": {"osType": os_type, "createOption": "Attach", "managedDisk": {"id": os_disk_id}},
                "dataDisks": [{"lun": i, "createOption": "Attach", "managedDisk": {"id": d}}
                              for i, d in enumerate(data_disk_ids)]},
            "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True}}]},
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}}}}
        self._call("create VM", f"{rg}/{name}",
                   lambda: self._compute.virtual_machines.begin_create_or_update(rg, name, body).result())
        made = self.vm(rg, name)
        if made is None:
            raise BackendError(f"create VM {rg}/{name}: the VM is gone right after its creation",
                               retryable=True)
        return made

    def vm(self, rg: str, name: str) -> Vm | None:
        v = self._maybe("read VM", f"{rg}/{name}",
                       lambda: self._compute.virtual_machines.get(rg, name, expand="instanceView"))
        return None if v is None else _vm(_raw(v))

    def start_vm(self, rg: str, name: str) -> None:
        self._call("start VM", f"{rg}/{name}",
                   lambda: self._compute.virtual_machines.begin_start(rg, name).result())

    def power_off_vm(self, rg: str, name: str) -> None:
        self._call("power off VM", f"{rg}/{name}",
                   lambda: self._compute.virtual_machines.begin_power_off(rg, name).result())

    def deallocate_vm(self, rg: str, name: str) -> None:
        self._call("deallocate VM", f"{rg}/{name}",
                   lambda: self._compute.virtual_machines.begin_deallocate(rg, name).result())

    def delete_vm(self, rg: str, name: str) -> None:
        """Delete the VM (its disks and NIC stay, detached); nothing to delete is fine."""
        self._maybe("delete VM", f"{rg}/{name}",
                   lambda: self._compute.virtual_machines.begin_delete(rg, name).result())

    def serial_log(self, rg: str, name: str) -> str:
        """The VM's serial console log from boot diagnostics ("" when there is none yet). The
        blob's SAS URL is fetched, used and dropped here."""
        got = self._call("read boot diagnostics of VM", f"{rg}/{name}", lambda: self._compute
                         .virtual_machines.retrieve_boot_diagnostics_data(rg, name,
                                                                          sas_uri_expiration_time_in_minutes=10))
        url = str(_raw(got).get("serialConsoleLogBlobUri") or "")
        if not url:
            return ""
        return _download_text(url, f"read the serial log of VM {rg}/{name}")


# -- wire form to values ---------------------------------------------------------------------------

def _odata(text: str) -> str:
    """A string literal's body in an OData $filter (a quote is doubled)."""
    return text.replace("'", "''")


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _error(e: Any) -> tuple[str, str]:
    """Azure's error code and message of an ``HttpResponseError`` (ARM's error body, or an
    operation's error object)."""
    err = getattr(e, "error", None)
    code = str(getattr(err, "code", "") or "") or (e.reason or "HttpError")
    message = str(getattr(err, "message", "") or "") or _first(e)
    return code, message.strip().splitlines()[0] if message.strip() else message


def _nic(raw: dict[str, Any]) -> Nic:
    props = raw.get("properties") or {}
    configs = props.get("ipConfigurations") or [{}]
    ip = str((configs[0].get("properties") or {}).get("privateIPAddress") or "")
    return Nic(raw["id"], raw["name"], ip, str((props.get("virtualMachine") or {}).get("id") or ""))


def _disk(raw: dict[str, Any]) -> ManagedDisk:
    props = raw.get("properties") or {}
    prov = str(props.get("provisioningState") or "")
    state = "Failed" if prov == "Failed" else str(props.get("diskState") or "")
    size = int(props.get("diskSizeBytes") or int(props.get("diskSizeGB") or 0) << 30)
    return ManagedDisk(raw["id"], raw["name"], state, size, str(props.get("hyperVGeneration") or "V1"),
                       dict(raw.get("tags") or {}), prov, str(raw.get("managedBy") or ""))


def _vm(raw: dict[str, Any]) -> Vm:
    props = raw.get("properties") or {}
    sp = props.get("storageProfile") or {}
    statuses = (props.get("instanceView") or {}).get("statuses") or []
    power = next((str(s["code"]).split("/", 1)[1] for s in statuses
                  if str(s.get("code", "")).startswith("PowerState/")), "")
    return Vm(raw["id"], raw["name"], str((props.get("hardwareProfile") or {}).get("vmSize") or ""), power,
              dict(raw.get("tags") or {}),
              str(((sp.get("osDisk") or {}).get("managedDisk") or {}).get("id") or ""),
              [str((d.get("managedDisk") or {}).get("id") or "") for d in sp.get("dataDisks") or []],
              [str(n["id"]) for n in (props.get("networkProfile") or {}).get("networkInterfaces") or []],
              str(props.get("provisioningState") or ""))


def _download_text(url: str, what: str) -> str:
    """A blob's text through its SAS URL; errors redacted (the SAS never leaves)."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError
    from azure.storage.blob import BlobClient

    where = redact(url)
    try:
        data = BlobClient.from_blob_url(url).download_blob().readall()
    except ResourceNotFoundError:
        return ""
    except AzureError as e:
        raise BackendError(redact(f"{what} ({where}): {_first(e)}", url), retryable=True) from None
    return bytes(data).decode("utf-8", errors="replace")


__all__ = ["Arm", "ArmEndpoints", "ManagedDisk", "Nic", "PermissionSet", "Permissions", "ResourceGroup",
           "StorageAccount", "Subnet", "VirtualNetwork", "Vm", "credential"]
