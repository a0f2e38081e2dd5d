"""Microsoft.Compute in the fake (test fake, not Azure): VM sizes and SKUs, managed disks
(Import, Upload, Empty; access grants as SAS on Azurite), and VMs that boot under QEMU
(``vm.py``). Shapes follow the compute specs' examples named at each handler
(specification/compute/resource-manager/Microsoft.Compute/{DiskRP,ComputeRP}/.../examples)."""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from rehost.targets.azure.vhd import FOOTER_SIZE, VhdError, check_fixed_vhd, make_footer
from rehost.testkit.azure_arm import catalog
from rehost.testkit.azure_arm.blobs import DISK_BLOB, Storage
from rehost.testkit.azure_arm.core import (
    JSON,
    ArmError,
    Ctx,
    Outcome,
    Reply,
    Router,
    State,
    not_found,
    now_iso,
)
from rehost.testkit.azure_arm.network import NET, mac_address
from rehost.testkit.azure_arm.vm import DiskImage, VmRunner, VmStartError

COMPUTE = "Microsoft.Compute"
MiB = 1 << 20
GiB = 1 << 30
#: Azure's bounds for uploadSizeBytes: 20 MiB + footer .. 32 TiB + footer
MIN_UPLOAD = 20 * MiB + FOOTER_SIZE
MAX_UPLOAD = (32 << 40) + FOOTER_SIZE
#: diskState values (the DiskState enum) in which the disk's SAS is open
OPEN_STATES = ("ReadyToUpload", "ActiveUpload", "ActiveSAS", "ActiveSASFrozen")


def register(r: Router, storage: Storage, runner: VmRunner) -> None:
    base = "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Compute"

    @r.route("GET", "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/vmSizes")
    def vm_sizes(ctx: Ctx) -> Reply:
        # Shape: VirtualMachineSizes_List (ListAvailableVmSizes_VirtualMachineSizes.json)
        _location(ctx, ctx.params["location"])
        return Reply(200, {"value": [s.vm_size() for s in catalog.SIZES]})

    @r.route("GET", "/subscriptions/{sub}/providers/Microsoft.Compute/skus")
    def skus(ctx: Ctx) -> Reply:
        # Shape: ResourceSkus_List (ListAvailableResourceSkus.json); $filter=location eq 'x'
        sub = _subscription(ctx)
        flt = ctx.query.get("$filter", "")
        locations = list(sub["locations"])
        if "location eq" in flt.lower():
            want = flt.split("'")[1].lower() if "'" in flt else ""
            locations = [loc for loc in locations if loc == want]
        return Reply(200, {"value": [s.sku(loc) for loc in locations for s in catalog.SIZES]})

    # -- disks -------------------------------------------------------------------------------

    @r.route("PUT", base + "/disks/{name}")
    def put_disk(ctx: Ctx) -> Reply:
        # Shape: Disks_CreateOrUpdate (Disk_Create_ByImportingBlobFromTheSameSubscription.json,
        # Disk_Create_UploadDisk.json, Disk_Create_Empty.json: 202/200, provisioningState
        # "Updating"), then Disk_Get.json for what GET answers
        return _put_disk(ctx, storage)

    @r.route("GET", base + "/disks/{name}")
    def get_disk(ctx: Ctx) -> Reply:
        # Shape: Disks_Get (Disk_Get.json)
        return Reply(200, _disk(ctx)["json"])

    @r.route("DELETE", base + "/disks/{name}")
    def delete_disk(ctx: Ctx) -> Reply:
        # Shape: Disks_Delete (Disk_Delete.json: 200/202/204); attached or with open access: 409
        e = _find(ctx, "disks")
        if e is None:
            return Reply(204)
        d = e["json"]
        state = d["properties"].get("diskState")
        if d.get("managedBy") or state == "Attached":
            raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is attached to VM "
                           f"{d.get('managedBy')}. Detach the disk or delete the VM first.")
        if state in OPEN_STATES and state != "ReadyToUpload":
            raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is in state {state}: revoke "
                           "its access (endGetAccess) before deleting it.")
        ctx.state.delete(d["id"])
        storage.drop_container(e["x"]["container"])
        return ctx.lro(202, None, provider=COMPUTE, location=d["location"])

    @r.route("POST", base + "/disks/{name}/beginGetAccess")
    def begin_get_access(ctx: Ctx) -> Reply:
        # Shape: Disks_GrantAccess (Disk_BeginGetAccess.json: 202 + Location, the final
        # result {"accessSAS": ...} from the Location URL)
        e = _disk(ctx)
        d, x = e["json"], e["x"]
        req = ctx.json_body()
        access = str(req.get("access") or "")
        seconds = int(req.get("durationInSeconds") or 3600)
        state = d["properties"]["diskState"]
        if access not in ("Read", "Write"):
            raise ArmError(400, "InvalidParameter", f"The value '{access}' of parameter 'access' is not "
                           "allowed: Read or Write.")
        if access == "Write" and state not in ("ReadyToUpload", "ActiveUpload"):
            raise ArmError(409, "OperationNotAllowed", f"Write access can only be granted to disk "
                           f"{d['name']} while it is ReadyToUpload; it is {state}.")
        if access == "Read":
            if state in ("ReadyToUpload", "ActiveUpload"):
                raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is in state {state}: "
                               "finish the upload (endGetAccess) before granting read access.")
            vm = d.get("managedBy")
            if vm and _power(ctx.state, runner, vm) != "deallocated":
                raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is attached to running VM "
                               f"{vm}: deallocate the VM before granting access to the disk.")
        policy = uuid.uuid4().hex[:32]
        url = storage.grant(x["container"], policy, write=access == "Write", seconds=seconds)
        d["properties"]["diskState"] = "ActiveUpload" if access == "Write" else (
            "ActiveSAS" if not d.get("managedBy") else state)
        x["access"] = access
        ctx.state.put(d["id"], d, x)
        return ctx.lro(202, None, provider=COMPUTE, location=d["location"],
                       finish=lambda: Outcome(output={"accessSAS": url}))

    @r.route("POST", base + "/disks/{name}/endGetAccess")
    def end_get_access(ctx: Ctx) -> Reply:
        # Shape: Disks_RevokeAccess (Disk_EndGetAccess.json: 202 + Location, then 200)
        e = _disk(ctx)
        d, x = e["json"], e["x"]
        storage.revoke(x["container"])
        state = d["properties"]["diskState"]
        if state in ("ActiveUpload", "ActiveSAS"):
            d["properties"]["diskState"] = "Attached" if d.get("managedBy") else "Unattached"
        x["access"] = None
        ctx.state.put(d["id"], d, x)
        return ctx.lro(202, None, provider=COMPUTE, location=d["location"])

    # -- virtual machines ----------------------------------------------------------------------

    @r.route("PUT", base + "/virtualMachines/{name}")
    def put_vm(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_CreateOrUpdate (VirtualMachine_Create_WithManagedBootDiagnostics
        # .json, an OS disk attached: createOption Attach + managedDisk.id): 201/200 with
        # Azure-AsyncOperation; Azure starts a VM when it creates it, so does the fake
        return _put_vm(ctx, storage, runner)

    @r.route("GET", base + "/virtualMachines/{name}")
    def get_vm(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_Get (VirtualMachine_Get.json; $expand=instanceView as in
        # VirtualMachine_Get_InstanceView.json)
        e = _vm(ctx)
        body = _vm_view(ctx.state, runner, e)
        if ctx.query.get("$expand", "").lower() == "instanceview":
            body["properties"]["instanceView"] = _instance_view(ctx.state, runner, e)
        return Reply(200, body)

    @r.route("GET", base + "/virtualMachines/{name}/instanceView")
    def instance_view(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_InstanceView (VirtualMachine_Get_InstanceView.json's instanceView)
        return Reply(200, _instance_view(ctx.state, runner, _vm(ctx)))

    @r.route("POST", base + "/virtualMachines/{name}/powerOff")
    def power_off(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_PowerOff (202 + Azure-AsyncOperation/Location, then 200)
        return _set_power(ctx, runner, storage, "stopped")

    @r.route("POST", base + "/virtualMachines/{name}/deallocate")
    def deallocate(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_Deallocate (202, then 200)
        return _set_power(ctx, runner, storage, "deallocated")

    @r.route("POST", base + "/virtualMachines/{name}/start")
    def start(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_Start (202, then 200)
        return _set_power(ctx, runner, storage, "running")

    @r.route("DELETE", base + "/virtualMachines/{name}")
    def delete_vm(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_Delete (VirtualMachine_Delete_Force.json: 200/202/204); the
        # disks and NICs stay, detached (deleteOption Detach, the default for attached disks)
        e = _find(ctx, "virtualMachines")
        if e is None:
            return Reply(204)
        vm = e["json"]
        runner.forget(vm["name"])
        with ctx.state.lock:
            for did in _vm_disk_ids(vm):
                de = ctx.state.get(did)
                if de is not None and str(de["json"].get("managedBy", "")).lower() == vm["id"].lower():
                    de["json"].pop("managedBy", None)
                    de["json"]["properties"]["diskState"] = "Unattached"
                    ctx.state.put(did, de["json"], de["x"])
            for ref in vm["properties"]["networkProfile"]["networkInterfaces"]:
                ne = ctx.state.get(ref["id"])
                if ne is not None:
                    ne["json"]["properties"].pop("virtualMachine", None)
                    ne["json"]["properties"].pop("macAddress", None)
                    ctx.state.put(ref["id"], ne["json"], ne["x"])
            ctx.state.delete(vm["id"])
        return ctx.lro(202, None, provider=COMPUTE, location=vm["location"])

    @r.route("POST", base + "/virtualMachines/{name}/retrieveBootDiagnosticsData")
    def boot_diagnostics(ctx: Ctx) -> Reply:
        # Shape: VirtualMachines_RetrieveBootDiagnosticsData
        # (VirtualMachine_RetrieveBootDiagnosticsData.json: 200 {consoleScreenshotBlobUri,
        # serialConsoleLogBlobUri}); the fake uploads the serial log so far and answers a read
        # SAS for it; it takes no screenshots, so that URI is left out
        e = _vm(ctx)
        vm = e["json"]
        diag = (vm["properties"].get("diagnosticsProfile") or {}).get("bootDiagnostics") or {}
        if not diag.get("enabled"):
            raise ArmError(409, "OperationNotAllowed",
                           f"Boot diagnostics are not enabled on VM {vm['name']}.")
        vmid = vm["properties"]["vmId"]
        container = f"bootdiagnostics-{re.sub('[^a-z0-9]', '', vm['name'].lower())[:9]}-{vmid}"
        blob = f"{vm['name']}.{vmid}.serialconsole.log"
        storage.upload_text(container, blob, runner.serial_log(vm["name"]))
        minutes = int(ctx.query.get("sasUriExpirationTimeInMinutes") or 120)
        return Reply(200, {"serialConsoleLogBlobUri": storage.read_sas(container, blob, minutes)})


# -- helpers ------------------------------------------------------------------------------------

def _subscription(ctx: Ctx) -> JSON:
    sub = ctx.state.subscription(ctx.params["sub"])
    if sub is None:
        raise ArmError(404, "SubscriptionNotFound",
                       f"The subscription '{ctx.params['sub']}' could not be found.")
    return sub


def _location(ctx: Ctx, location: str) -> str:
    loc = location.replace(" ", "").lower()
    if not loc:
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
    if loc not in _subscription(ctx)["locations"]:
        code = "NoRegisteredProviderFound" if ctx.method == "GET" else "LocationNotAvailableForResourceType"
        raise ArmError(400, code, f"The provided location '{loc}' is not available for this subscription.")
    return loc


def _find(ctx: Ctx, kind: str) -> JSON | None:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    return ctx.state.get(ctx.state.rid(sub, rg, f"{COMPUTE}/{kind}", name))


def _disk(ctx: Ctx) -> JSON:
    e = _find(ctx, "disks")
    if e is None:
        raise not_found(f"{COMPUTE}/disks", ctx.params["name"], ctx.params["rg"])
    return e


def _vm(ctx: Ctx) -> JSON:
    e = _find(ctx, "virtualMachines")
    if e is None:
        raise not_found(f"{COMPUTE}/virtualMachines", ctx.params["name"], ctx.params["rg"])
    return e


def _put_disk(ctx: Ctx, storage: Storage) -> Reply:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    req = ctx.json_body()
    location = _location(ctx, str(req.get("location") or ""))
    props: JSON = req.get("properties") or {}
    creation: JSON = props.get("creationData") or {}
    option = str(creation.get("createOption") or "")
    did = ctx.state.rid(sub, rg, f"{COMPUTE}/disks", name)
    old = ctx.state.get(did)
    sku = str((req.get("sku") or {}).get("name") or "Standard_LRS")
    if old is not None:  # an update: tags and SKU only
        was = str(old["json"]["properties"]["creationData"]["createOption"])
        if option and option.lower() != was.lower():
            raise ArmError(409, "PropertyChangeNotAllowed",
                           "Changing property 'creationData.createOption' is not allowed.")
        d = old["json"]
        d["tags"] = req.get("tags") or {}
        d["sku"] = _sku(sku)
        ctx.state.put(did, d, old["x"])
        return ctx.lro(200, d, provider=COMPUTE, location=location)
    gen = str(props.get("hyperVGeneration") or "V1")
    if gen not in ("V1", "V2"):
        raise ArmError(400, "InvalidParameter",
                       f"The value '{gen}' of parameter 'hyperVGeneration' is not allowed.")
    container = "md-" + uuid.uuid4().hex
    finish = Outcome
    base: dict[str, Any] = {
        "id": did, "name": name, "type": f"{COMPUTE}/disks", "location": location,
        "tags": req.get("tags") or {}, "sku": _sku(sku),
        "properties": {"hyperVGeneration": gen, "creationData": dict(creation),
                       "provisioningState": "Succeeded", "uniqueId": str(uuid.uuid4()),
                       "timeCreated": now_iso(),
                       "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
                       "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled"}}
    if props.get("osType"):
        base["properties"]["osType"] = props["osType"]
    if option == "Import":
        size, finish = _import(ctx, storage, creation, container, did)
    elif option == "Upload":
        size = int(creation.get("uploadSizeBytes") or 0)
        if not MIN_UPLOAD <= size <= MAX_UPLOAD or (size - FOOTER_SIZE) % MiB:
            raise ArmError(400, "InvalidParameter",
                           f"uploadSizeBytes {size} must be a whole number of MiB plus the 512-byte VHD "
                           f"footer, between {MIN_UPLOAD} and {MAX_UPLOAD} bytes.")
        storage.create_page_blob(container, size)
        size -= FOOTER_SIZE
    elif option == "Empty":
        gb = int(props.get("diskSizeGB") or 0)
        if gb <= 0:
            raise ArmError(400, "InvalidParameter", "diskSizeGB is required for an empty disk.")
        size = gb * GiB
        storage.create_page_blob(container, size + FOOTER_SIZE)
        storage.blob(container, DISK_BLOB).upload_page(make_footer(size), offset=size, length=FOOTER_SIZE)
    else:
        raise ArmError(400, "InvalidParameter", f"The fake supports createOption Import, Upload or Empty, "
                       f"not '{option}'.")
    base["properties"]["diskSizeGB"] = math.ceil(size / GiB)
    base["properties"]["diskSizeBytes"] = size
    base["properties"]["diskState"] = "ReadyToUpload" if option == "Upload" else "Unattached"
    ctx.state.put(did, base, {"container": container, "access": None})
    shown = {**base, "properties": {**base["properties"], "provisioningState": "Updating"}}
    return ctx.lro(202, shown, provider=COMPUTE, location=location, finish=finish)


def _sku(name: str) -> JSON:
    return {"name": name, "tier": "Premium" if name.lower().startswith("premium") else "Standard"}


def _import(ctx: Ctx, storage: Storage, creation: JSON, container: str, did: str) -> tuple[int, Any]:
    """Check the source (synchronously, as Azure validates the request) and copy it; the
    footer is checked by the operation, which fails like Azure's when the VHD is not one."""
    source = str(creation.get("sourceUri") or "")
    account_id = str(creation.get("storageAccountId") or "")
    if not source:
        raise ArmError(400, "InvalidParameter", "sourceUri is required when createOption is Import.")
    if "snapshot=" in source.lower():
        # Import takes a blob (a .vhd page blob); a ?snapshot= URL is not documented as a source:
        # rehost copies a snapshot into a blob of its own first (design §11)
        raise ArmError(400, "InvalidParameter", "The source URI names a blob snapshot (snapshot=); "
                       "Import takes a page blob: copy the snapshot into a blob of its own first.")
    account = ctx.state.get(account_id) if account_id else None
    if account is None:
        raise ArmError(400, "InvalidParameter", f"storageAccountId '{account_id}' is required for Import "
                       "and must name a storage account of this subscription.")
    where = storage.locate(source)
    if where is None:
        raise ArmError(400, "InvalidParameter", f"The source blob is not in storage account "
                       f"{account['json']['name']}.")
    props = storage.properties(where[0], where[1])
    if props is None:
        raise ArmError(404, "NotFound", f"The source blob {where[0]}/{where[1]} was not found.")
    if str(props.blob_type).lower().endswith("blockblob"):
        raise ArmError(400, "InvalidParameter", "The source blob is a block blob; Import takes a page blob.")
    size = int(props.size)
    storage.copy_in(container, (where[0], where[1]))

    def finish() -> Outcome:
        problem = None
        if size < FOOTER_SIZE + MiB:
            problem = f"the blob's {size} bytes cannot hold a VHD"
        else:
            try:
                check_fixed_vhd(storage.read(container, DISK_BLOB, size - FOOTER_SIZE, FOOTER_SIZE), size)
            except VhdError as e:
                problem = str(e)
        if problem is None:
            return Outcome()
        with ctx.state.lock:
            entry = ctx.state.get(did)
            if entry is not None:
                entry["json"]["properties"]["provisioningState"] = "Failed"
                ctx.state.put(did, entry["json"], entry["x"])
        return Outcome("Failed", error={
            "code": "InvalidVhd", "message": f"The source blob {where[0]}/{where[1]} is not a valid fixed "
            f"VHD: {problem}. Azure takes a fixed VHD whose virtual size is a whole number of MiB."})

    return size - FOOTER_SIZE, finish


def _vm_disk_ids(vm: JSON) -> list[str]:
    sp = vm["properties"]["storageProfile"]
    return [sp["osDisk"]["managedDisk"]["id"], *(d["managedDisk"]["id"] for d in sp.get("dataDisks", []))]


def _power(state: State, runner: VmRunner, vm_id: str) -> str:
    e = state.get(vm_id)
    if e is None:
        return "deallocated"
    want = e["x"].get("power", "running")
    if want == "running" and not runner.running(e["json"]["name"]):
        return "stopped"  # the guest powered off, or QEMU ended
    return str(want)


def _vm_view(state: State, runner: VmRunner, e: JSON) -> JSON:
    body: JSON = {**e["json"], "properties": dict(e["json"]["properties"])}
    return body


def _instance_view(state: State, runner: VmRunner, e: JSON) -> JSON:
    vm, x = e["json"], e["x"]
    prov = vm["properties"]["provisioningState"]
    power = _power(state, runner, vm["id"]) if prov != "Failed" else "stopped"
    statuses = [{"code": f"ProvisioningState/{prov.lower()}",
                 "level": "Info" if prov != "Failed" else "Error",
                 "displayStatus": f"Provisioning {prov.lower()}", "time": x.get("changed", now_iso())},
                {"code": f"PowerState/{power}", "level": "Info",
                 "displayStatus": {"running": "VM running", "stopped": "VM stopped",
                                   "deallocated": "VM deallocated"}.get(power, power)}]
    if x.get("error"):
        statuses[0]["message"] = x["error"]
    return {"computerName": vm["name"], "hyperVGeneration": x.get("generation", "V1"),
            "disks": [{"name": did.rsplit("/", 1)[-1], "statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info",
                 "displayStatus": "Provisioning succeeded"}]} for did in _vm_disk_ids(vm)],
            "bootDiagnostics": {}, "statuses": statuses}


def _put_vm(ctx: Ctx, storage: Storage, runner: VmRunner) -> Reply:
    sub, rg, name = ctx.params["sub"], ctx.params["rg"], ctx.params["name"]
    ctx.state.require_group(sub, rg)
    req = ctx.json_body()
    location = _location(ctx, str(req.get("location") or ""))
    vid = ctx.state.rid(sub, rg, f"{COMPUTE}/virtualMachines", name)
    props: JSON = req.get("properties") or {}
    with ctx.state.lock:
        old = ctx.state.get(vid)
        if old is not None:  # an update: tags and boot diagnostics
            vm = old["json"]
            vm["tags"] = req.get("tags") or {}
            if "diagnosticsProfile" in props:
                vm["properties"]["diagnosticsProfile"] = props["diagnosticsProfile"]
            ctx.state.put(vid, vm, old["x"])
            return ctx.lro(200, vm, provider=COMPUTE, location=location)
        size_name = str((props.get("hardwareProfile") or {}).get("vmSize") or "")
        size = catalog.size(size_name)
        if size is None:
            raise ArmError(409, "SkuNotAvailable", f"The requested VM size '{size_name}' is not available in "
                           f"location '{location}'.")
        sp: JSON = props.get("storageProfile") or {}
        os_disk: JSON = sp.get("osDisk") or {}
        if str(os_disk.get("createOption", "")).lower() != "attach":
            raise ArmError(400, "InvalidParameter", "The fake makes VMs from attached managed disks only "
                           "(storageProfile.osDisk.createOption Attach).")
        refs = [(os_disk, -1), *((d, int(d.get("lun", i))) for i, d in enumerate(sp.get("dataDisks") or []))]
        if len(refs) - 1 > size.max_data_disks:
            raise ArmError(409, "OperationNotAllowed", f"The maximum number of data disks allowed to be "
                           f"attached to a VM of size {size.name} is {size.max_data_disks}.")
        disks = []
        for ref, _lun in refs:
            did = str((ref.get("managedDisk") or {}).get("id") or "")
            de = ctx.state.get(did) if did else None
            if de is None:
                raise ArmError(404, "NotFound", f"Disk {did.rsplit('/', 1)[-1] or '(none)'} is not found.")
            d = de["json"]
            state = d["properties"]["diskState"]
            if state in OPEN_STATES:
                raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} cannot be attached to the VM "
                               f"because it is in state {state}: revoke its access (endGetAccess) first.")
            if d.get("managedBy"):
                raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is already attached to VM "
                               f"{d['managedBy']}.")
            if d["properties"]["provisioningState"] != "Succeeded":
                raise ArmError(409, "OperationNotAllowed", f"Disk {d['name']} is in provisioning state "
                               f"{d['properties']['provisioningState']}.")
            if d["location"] != location:
                raise ArmError(400, "InvalidParameter",
                               f"Disk {d['name']} is in {d['location']}, the VM in {location}.")
            disks.append(de)
        gen = str(disks[0]["json"]["properties"].get("hyperVGeneration") or "V1")
        if gen not in size.generations.split(","):
            raise ArmError(400, "BadRequest", f"The selected VM size '{size.name}' cannot boot Hypervisor "
                           f"Generation '{gen[1:]}'. If this was a Create operation please check that the "
                           "Hypervisor Generation of the Image matches the Hypervisor Generation of the "
                           "selected VM Size.")
        nic_refs = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nic_refs:
            raise ArmError(400, "InvalidParameter", "At least one network interface is required.")
        nics = []
        for ref in nic_refs:
            ne = ctx.state.get(str(ref.get("id") or ""))
            if ne is None:
                raise ArmError(400, "InvalidResourceReference", f"Resource {ref.get('id')} referenced by "
                               f"resource {vid} was not found.")
            attached = (ne["json"]["properties"].get("virtualMachine") or {}).get("id")
            if attached:
                raise ArmError(400, "NicInUse", f"Network Interface {ne['json']['id']} is used by existing "
                               f"resource {attached}.")
            if ne["json"]["location"] != location:
                raise ArmError(400, "InvalidResourceReference",
                               f"NIC {ne['json']['id']} is not in {location}.")
            nics.append(ne)
        vmid = str(uuid.uuid4())
        os_type = os_disk.get("osType") or disks[0]["json"]["properties"].get("osType") or "Linux"
        sku = disks[0]["json"]["sku"]["name"]
        storage_profile = {
            "osDisk": {"osType": os_type, "name": disks[0]["json"]["name"], "createOption": "Attach",
                       "caching": "ReadWrite", "managedDisk": {"id": disks[0]["json"]["id"],
                                                               "storageAccountType": sku},
                       "deleteOption": "Detach", "diskSizeGB": disks[0]["json"]["properties"]["diskSizeGB"]},
            "dataDisks": [{"lun": lun, "name": de["json"]["name"], "createOption": "Attach",
                           "caching": "None",
                           "managedDisk": {"id": de["json"]["id"],
                                           "storageAccountType": de["json"]["sku"]["name"]},
                           "deleteOption": "Detach", "diskSizeGB": de["json"]["properties"]["diskSizeGB"],
                           "toBeDetached": False}
                          for (_ref, lun), de in zip(refs[1:], disks[1:], strict=True)]}
        vm = {"id": vid, "name": name, "type": f"{COMPUTE}/virtualMachines", "location": location,
              "tags": req.get("tags") or {},
              "properties": {"vmId": vmid, "hardwareProfile": {"vmSize": size.name},
                             "storageProfile": storage_profile,
                             "networkProfile": {"networkInterfaces": [
                                 {"id": ne["json"]["id"], "properties": {"primary": i == 0}}
                                 for i, ne in enumerate(nics)]},
                             "diagnosticsProfile": (props.get("diagnosticsProfile")
                                                    or {"bootDiagnostics": {"enabled": False}}),
                             "provisioningState": "Succeeded", "timeCreated": now_iso()}}
        for de in disks:
            de["json"]["managedBy"] = vid
            de["json"]["properties"]["diskState"] = "Attached"
            ctx.state.put(de["json"]["id"], de["json"], de["x"])
        for ne in nics:
            ne["json"]["properties"]["virtualMachine"] = {"id": vid}
            ne["json"]["properties"]["macAddress"] = mac_address()
            ctx.state.put(ne["json"]["id"], ne["json"], ne["x"])
        x = {"power": "running", "generation": gen, "memory_mb": size.memory_mb, "changed": now_iso(),
             "disks": [[de["x"]["container"], de["json"]["name"]] for de in disks], "error": None}
        ctx.state.put(vid, vm, x)
    error = _boot(ctx.state, runner, vid)
    shown = {**vm, "properties": {**vm["properties"], "provisioningState": "Creating"}}
    return ctx.lro(201, shown, provider=COMPUTE, location=location, finish=lambda: _boot_outcome(error))


def _boot(state: State, runner: VmRunner, vid: str) -> str | None:
    """Start the VM's QEMU; on failure the VM's provisioning fails, with the reason."""
    e = state.get(vid)
    assert e is not None
    vm, x = e["json"], e["x"]
    try:
        runner.start(vm["name"], [DiskImage(c, n) for c, n in x["disks"]], x["generation"], x["memory_mb"])
    except VmStartError as err:
        vm["properties"]["provisioningState"] = "Failed"
        x["error"] = str(err)
        state.put(vid, vm, x)
        return str(err)
    vm["properties"]["provisioningState"] = "Succeeded"
    x["error"] = None
    state.put(vid, vm, x)
    return None


def _boot_outcome(error: str | None) -> Outcome:
    if error is None:
        return Outcome()
    return Outcome("Failed", error={"code": "VMStartFailed",
                                    "message": f"The VM could not be started: {error}"})


def _set_power(ctx: Ctx, runner: VmRunner, storage: Storage, power: str) -> Reply:
    e = _vm(ctx)
    vm, x = e["json"], e["x"]
    error = None
    if power == "running":
        x["power"] = "running"
        ctx.state.put(vm["id"], vm, x)
        if not runner.running(vm["name"]):
            error = _boot(ctx.state, runner, vm["id"])
    else:
        runner.stop(vm["name"])
        x["power"] = power
        x["changed"] = now_iso()
        ctx.state.put(vm["id"], vm, x)
    return ctx.lro(202, None, provider=COMPUTE, location=vm["location"], finish=lambda: _boot_outcome(error))


__all__ = ["NET", "register"]
