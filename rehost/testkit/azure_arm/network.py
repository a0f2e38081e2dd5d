"""Microsoft.Network in the fake (test fake, not Azure): virtual networks and subnets (seeded,
read-only), network security groups and network interfaces (stateful, with Azure's private IP
rules). Shapes follow the network specs' examples named at each handler."""

from __future__ import annotations

import ipaddress
import random
import uuid
from typing import Any

from rehost.testkit.azure_arm.core import JSON, ArmError, Ctx, Outcome, Reply, Router, State, not_found

NET = "Microsoft.Network"


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def vnet_body(sub: str, rg: str, name: str, location: str, prefix: str, subnets: dict[str, str],
              peerings: list[str]) -> JSON:
    """A seeded virtual network (shape: VirtualNetworkGet.json / VirtualNetworkGetWithSubnetPeering)."""
    vid = State.rid(sub, rg, f"{NET}/virtualNetworks", name)
    return {
        "id": vid, "name": name, "type": f"{NET}/virtualNetworks", "location": location, "tags": {},
        "etag": _etag(),
        "properties": {
            "provisioningState": "Succeeded", "resourceGuid": str(uuid.uuid4()),
            "addressSpace": {"addressPrefixes": [prefix]},
            "subnets": [{"id": f"{vid}/subnets/{sn}", "name": sn, "type": f"{NET}/virtualNetworks/subnets",
                         "etag": _etag(),
                         "properties": {"provisioningState": "Succeeded", "addressPrefix": p}}
                        for sn, p in subnets.items()],
            "virtualNetworkPeerings": [
                {"id": f"{vid}/virtualNetworkPeerings/{name}-to-{peer}", "name": f"{name}-to-{peer}",
                 "type": f"{NET}/virtualNetworks/virtualNetworkPeerings", "etag": _etag(),
                 "properties": {"provisioningState": "Succeeded", "peeringState": "Connected",
                                "peeringSyncLevel": "FullyInSync", "allowVirtualNetworkAccess": True,
                                "allowForwardedTraffic": False, "allowGatewayTransit": False,
                                "useRemoteGateways": False,
                                "remoteVirtualNetwork": {
                                    "id": State.rid(sub, rg, f"{NET}/virtualNetworks", peer)}}}
                for peer in peerings],
        },
    }


def _default_rules(nsg_id: str) -> list[JSON]:
    """The six default rules every NSG has (NetworkSecurityGroupCreate.json's response)."""
    rules = [("AllowVnetInBound", "Allow", "Inbound", 65000, "VirtualNetwork", "VirtualNetwork"),
             ("AllowAzureLoadBalancerInBound", "Allow", "Inbound", 65001, "AzureLoadBalancer", "*"),
             ("DenyAllInBound", "Deny", "Inbound", 65500, "*", "*"),
             ("AllowVnetOutBound", "Allow", "Outbound", 65000, "VirtualNetwork", "VirtualNetwork"),
             ("AllowInternetOutBound", "Allow", "Outbound", 65001, "*", "Internet"),
             ("DenyAllOutBound", "Deny", "Outbound", 65500, "*", "*")]
    return [{"id": f"{nsg_id}/defaultSecurityRules/{n}", "name": n,
             "type": f"{NET}/networkSecurityGroups/defaultSecurityRules", "etag": _etag(),
             "properties": {"provisioningState": "Succeeded", "description": n, "protocol": "*",
                            "sourcePortRange": "*", "destinationPortRange": "*",
                            "sourceAddressPrefix": src, "destinationAddressPrefix": dst,
                            "access": access, "priority": prio, "direction": direction}}
            for n, access, direction, prio, src, dst in rules]


def _subnet(state: State, subnet_id: str) -> tuple[JSON, JSON] | None:
    """(vnet body, subnet body) for a subnet id."""
    vnet_id, _, name = subnet_id.rstrip("/").rpartition("/subnets/")
    e = state.get(vnet_id)
    if e is None:
        return None
    sn = next((s for s in e["json"]["properties"]["subnets"] if s["name"].lower() == name.lower()), None)
    return (e["json"], sn) if sn is not None else None


def _nics(state: State, sub: str) -> list[JSON]:
    prefix = f"/subscriptions/{sub}/".lower()
    return [e["json"] for k, e in state.data["resources"].items()
            if k.startswith(prefix) and e["json"]["type"] == f"{NET}/networkInterfaces"]


def _used_ips(state: State, sub: str, subnet_id: str, except_nic: str = "") -> dict[str, str]:
    used: dict[str, str] = {}
    for nic in _nics(state, sub):
        if nic["id"].lower() == except_nic.lower():
            continue
        for ipc in nic["properties"]["ipConfigurations"]:
            if ipc["properties"]["subnet"]["id"].lower() == subnet_id.lower():
                used[ipc["properties"]["privateIPAddress"]] = nic["id"]
    return used


def register(r: Router) -> None:
    base = "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Network"

    @r.route("GET", base + "/virtualNetworks/{name}")
    def get_vnet(ctx: Ctx) -> Reply:
        # Shape: VirtualNetworks_Get (VirtualNetworkGetWithSubnetPeering.json)
        return Reply(200, _get(ctx, "virtualNetworks"))

    @r.route("GET", base + "/virtualNetworks/{name}/subnets/{subnet}")
    def get_subnet(ctx: Ctx) -> Reply:
        # Shape: Subnets_Get (SubnetGet.json), with the ipConfigurations that use it
        vnet = _get(ctx, "virtualNetworks")
        sn = next((s for s in vnet["properties"]["subnets"]
                   if s["name"].lower() == ctx.params["subnet"].lower()), None)
        if sn is None:
            raise not_found(f"{NET}/virtualNetworks/{vnet['name']}/subnets", ctx.params["subnet"],
                            ctx.params["rg"])
        used = _used_ips(ctx.state, ctx.params["sub"], sn["id"])
        ipcs = [{"id": f"{nic}/ipConfigurations/ipconfig1"} for nic in sorted(set(used.values()))]
        return Reply(200, {**sn, "properties": {**sn["properties"], "ipConfigurations": ipcs}})

    @r.route("PUT", base + "/networkSecurityGroups/{name}")
    def put_nsg(ctx: Ctx) -> Reply:
        # Shape: NetworkSecurityGroups_CreateOrUpdate (NetworkSecurityGroupCreate.json: 201/200
        # with Azure-AsyncOperation)
        sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
        ctx.state.require_group(sub, rg)
        req = ctx.json_body()
        location = _location(ctx, req)
        nid = ctx.state.rid(sub, rg, f"{NET}/networkSecurityGroups", name)
        old = ctx.state.get(nid)
        rules = (req.get("properties") or {}).get("securityRules") or []
        body = {"id": nid, "name": name, "type": f"{NET}/networkSecurityGroups", "location": location,
                "tags": req.get("tags") or {}, "etag": _etag(),
                "properties": {"provisioningState": "Succeeded",
                               "resourceGuid": (old["json"]["properties"]["resourceGuid"] if old
                                                else str(uuid.uuid4())),
                               "securityRules": rules, "defaultSecurityRules": _default_rules(nid)}}
        ctx.state.put(nid, body)
        return ctx.lro(200 if old else 201, _nsg_view(ctx.state, body), provider=NET, location=location)

    @r.route("GET", base + "/networkSecurityGroups/{name}")
    def get_nsg(ctx: Ctx) -> Reply:
        # Shape: NetworkSecurityGroups_Get (NetworkSecurityGroupGet.json)
        return Reply(200, _nsg_view(ctx.state, _get(ctx, "networkSecurityGroups")))

    @r.route("DELETE", base + "/networkSecurityGroups/{name}")
    def delete_nsg(ctx: Ctx) -> Reply:
        # Shape: NetworkSecurityGroups_Delete (200/202/204); in use by a NIC: 400
        # InUseNetworkSecurityGroupCannotBeDeleted
        e = _find(ctx, "networkSecurityGroups")
        if e is None:
            return Reply(204)
        users = _nsg_users(ctx.state, e["json"]["id"])
        if users:
            raise ArmError(400, "InUseNetworkSecurityGroupCannotBeDeleted",
                           f"Network security group {e['json']['id']} cannot be deleted because it is in "
                           f"use by the following resources: {', '.join(users)}. In order to delete the "
                           "Network security group, remove the association with the resource(s).")
        ctx.state.delete(e["json"]["id"])
        return ctx.lro(202, None, provider=NET, location=e["json"]["location"])

    @r.route("PUT", base + "/networkInterfaces/{name}")
    def put_nic(ctx: Ctx) -> Reply:
        # Shape: NetworkInterfaces_CreateOrUpdate (NetworkInterfaceCreate.json: 201/200 with
        # Azure-AsyncOperation); private IP rules as Azure applies them: static inside the
        # subnet and free, dynamic = the first free address after the 4 Azure reserves
        return _put_nic(ctx)

    @r.route("GET", base + "/networkInterfaces/{name}")
    def get_nic(ctx: Ctx) -> Reply:
        # Shape: NetworkInterfaces_Get (NetworkInterfaceGet.json)
        return Reply(200, _get(ctx, "networkInterfaces"))

    @r.route("DELETE", base + "/networkInterfaces/{name}")
    def delete_nic(ctx: Ctx) -> Reply:
        # Shape: NetworkInterfaces_Delete (200/202/204); attached to a VM: 400 NicInUse
        e = _find(ctx, "networkInterfaces")
        if e is None:
            return Reply(204)
        vm = (e["json"]["properties"].get("virtualMachine") or {}).get("id")
        if vm:
            raise ArmError(400, "NicInUse", f"Network Interface {e['json']['id']} is used by existing "
                           f"resource {vm}. In order to delete the network interface, it must be "
                           "dissociated from the resource. To learn more, see aka.ms/deletenic.")
        ctx.state.delete(e["json"]["id"])
        return ctx.lro(202, None, provider=NET, location=e["json"]["location"])


def _location(ctx: Ctx, req: JSON) -> str:
    loc = str(req.get("location") or "").replace(" ", "").lower()
    if not loc:
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
    sub = ctx.state.subscription(ctx.params["sub"])
    if sub is None or loc not in sub["locations"]:
        raise ArmError(400, "LocationNotAvailableForResourceType",
                       f"The provided location '{loc}' is not available for this subscription.")
    return loc


def _find(ctx: Ctx, kind: str) -> JSON | None:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    return ctx.state.get(ctx.state.rid(sub, rg, f"{NET}/{kind}", name))


def _get(ctx: Ctx, kind: str) -> JSON:
    e = _find(ctx, kind)
    if e is None:
        raise not_found(f"{NET}/{kind}", ctx.params["name"], ctx.params["rg"])
    body: JSON = e["json"]
    return body


def _nsg_users(state: State, nsg_id: str) -> list[str]:
    sub = nsg_id.split("/")[2]
    return [nic["id"] for nic in _nics(state, sub)
            if (nic["properties"].get("networkSecurityGroup") or {}).get("id", "").lower() == nsg_id.lower()]


def _nsg_view(state: State, body: JSON) -> JSON:
    users = _nsg_users(state, body["id"])
    return {**body, "properties": {**body["properties"], "networkInterfaces": [{"id": u} for u in users]}}


def _put_nic(ctx: Ctx) -> Reply:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    req = ctx.json_body()
    location = _location(ctx, req)
    props: JSON = req.get("properties") or {}
    nid = ctx.state.rid(sub, rg, f"{NET}/networkInterfaces", name)
    with ctx.state.lock:
        old = ctx.state.get(nid)
        configs = props.get("ipConfigurations") or []
        if not configs:
            raise ArmError(400, "NetworkInterfaceMustHaveAtLeastOneIpConfiguration",
                           f"Network interface {nid} must have one or more IP configurations.")
        out_configs = []
        for i, ipc in enumerate(configs):
            p: JSON = ipc.get("properties") or {}
            cname = ipc.get("name") or f"ipconfig{i + 1}"
            subnet_id = str((p.get("subnet") or {}).get("id") or "")
            found = _subnet(ctx.state, subnet_id) if subnet_id else None
            if found is None:
                raise ArmError(400, "InvalidResourceReference",
                               f"Resource {subnet_id or '(none)'} referenced by resource {nid} was not "
                               "found. "
                               "Please make sure that the referenced resource exists, and that both "
                               "resources are in the same region.")
            vnet, sn = found
            if vnet["location"] != location:
                raise ArmError(400, "InvalidResourceReference",
                               f"Resource {sn['id']} referenced by resource {nid} was not found in "
                               f"region {location}.")
            net = ipaddress.ip_network(sn["properties"]["addressPrefix"])
            used = _used_ips(ctx.state, sub, sn["id"], except_nic=nid)
            method = str(p.get("privateIPAllocationMethod") or "Dynamic").capitalize()
            wanted = p.get("privateIPAddress")
            previous = None
            if old is not None:
                prev_cfg = old["json"]["properties"]["ipConfigurations"]
                if i < len(prev_cfg) and _same(prev_cfg[i]["properties"]["subnet"]["id"], sn["id"]):
                    previous = prev_cfg[i]["properties"]["privateIPAddress"]
            if method == "Static":
                if not wanted:
                    raise ArmError(400, "PrivateIPAddressIsRequired",
                                   f"IP configuration {nid}/ipConfigurations/{cname} must reference "
                                   "a private IP address when the allocation method is Static.")
                ip = ipaddress.ip_address(str(wanted))
                hosts = list(net)
                if ip not in net or ip in hosts[:4] or ip == hosts[-1]:
                    raise ArmError(400, "PrivateIPAddressNotInSubnet",
                                   f"IP configuration {nid}/ipConfigurations/{cname} references the "
                                   f"private IP address {ip} which is not in the usable range of subnet "
                                   f"{sn['id']} ({net}; Azure reserves the first four addresses and "
                                   "the last).")
                if str(ip) in used:
                    raise ArmError(409, "PrivateIPAddressInUse",
                                   f"IP configuration {nid}/ipConfigurations/{cname} is using the private "
                                   f"IP address {ip} which is already allocated to resource {used[str(ip)]}.")
                address = str(ip)
            else:
                address = previous or _next_free(net, used)
            out_configs.append({
                "id": f"{nid}/ipConfigurations/{cname}", "name": cname,
                "type": f"{NET}/networkInterfaces/ipConfigurations", "etag": _etag(),
                "properties": {"provisioningState": "Succeeded", "privateIPAddress": address,
                               "privateIPAllocationMethod": method, "privateIPAddressVersion": "IPv4",
                               "subnet": {"id": sn["id"]}, "primary": i == 0}})
        nsg_ref = (props.get("networkSecurityGroup") or {}).get("id")
        if nsg_ref and ctx.state.get(nsg_ref) is None:
            raise ArmError(400, "InvalidResourceReference",
                           f"Resource {nsg_ref} referenced by resource {nid} was not found.")
        body: dict[str, Any] = {
            "id": nid, "name": name, "type": f"{NET}/networkInterfaces", "location": location,
            "tags": req.get("tags") or {}, "etag": _etag(),
            "properties": {
                "provisioningState": "Succeeded",
                "resourceGuid": old["json"]["properties"]["resourceGuid"] if old else str(uuid.uuid4()),
                "ipConfigurations": out_configs, "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
                "enableAcceleratedNetworking": bool(props.get("enableAcceleratedNetworking", False)),
                "enableIPForwarding": bool(props.get("enableIPForwarding", False)),
                "nicType": "Standard"}}
        if nsg_ref:
            body["properties"]["networkSecurityGroup"] = {"id": ctx.state.get(nsg_ref)["json"]["id"]}  # type: ignore[index]
        if old is not None:
            for keep in ("virtualMachine", "macAddress"):
                if keep in old["json"]["properties"]:
                    body["properties"][keep] = old["json"]["properties"][keep]
        ctx.state.put(nid, body)
    return ctx.lro(200 if old else 201, body, provider=NET, location=location, finish=Outcome)


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _next_free(net: ipaddress.IPv4Network | ipaddress.IPv6Network, used: dict[str, str]) -> str:
    hosts = list(net)
    for ip in hosts[4:-1]:
        if str(ip) not in used:
            return str(ip)
    raise ArmError(400, "SubnetIsFull", f"Subnet {net} has no free private IP address.")


def mac_address() -> str:
    return "00-0D-3A-" + "-".join(f"{random.randrange(256):02X}" for _ in range(3))
