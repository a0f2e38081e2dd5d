"""Failover to Azure from replicas already in place: what it writes to Azure and how long rehost
takes before it asks for the VM, for a 1 GiB and an 8 GiB disk (neither may grow with the disk).

    .venv/bin/python bench/azure_failover.py [--sizes-gib 1,8] [--data-mib 32] [--change 0.01]

Azure here is **Azurite** (blob storage, real) and **rehost's Resource Manager contract fake**
(``rehost.testkit.azure_arm``, HTTPS on loopback; NOT Azure): the seconds are rehost's plus the
fake's on loopback, not Azure's. The bytes are measured on the wire: the target's blob endpoint
is a counting proxy in front of Azurite (``rehost.testkit.faultproxy``, ``every=0``), so they do
not come from rehost's own report. Copies inside the storage account (Copy Blob, Import of a
managed disk) send no bytes from rehost and are counted as requests only.

Per disk size: the demo's tiny Linux (IDE and Hyper-V drivers in its initramfs) grown to the
size, with ``data-mib`` of random data in its second half; a vault with an ``azure`` target;
the initial replication (its replica sync), ``change`` of that data's 4 KiB blocks rewritten
and a delta cycle; the same amount changed again, then ``failover`` (its final sync ships
that, then stage, NSG + NIC + VM, boot verified from the serial log). Reported: bytes written
per cycle against bytes changed; at failover, the bytes written and the time from the start
of the job to the create-VM call (the Resource Manager request is timed where rehost makes
it); and the reference a user without a replica has: a fixed VHD of the whole disk uploaded
at failover (azcopy of the VHD: padded size + footer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rehost.cli.demo_azure import GUEST_MODULES
from rehost.jobs.runner import run_job
from rehost.targets.azure import arm
from rehost.targets.azure.vhd import FOOTER_SIZE, padded_size
from rehost.testkit.azure_arm import ArmFake
from rehost.testkit.azurite import ACCOUNT, Azurite
from rehost.testkit.faultproxy import FaultProxy
from rehost.testkit.tinylinux import build_tiny_linux
from rehost.vault import cycles, failover, inventory, targets
from rehost.vault.vault import Vault

MiB, GiB = 1 << 20, 1 << 30
SUB = "22222222-3333-4444-8555-666666666666"


def _image(base: Path, dest: Path, size: int, data: int, rng: random.Random) -> list[int]:
    """``base`` grown to ``size`` with ``data`` bytes of random 1 MiB regions in its second half."""
    shutil.copyfile(base, dest)
    regions = sorted(rng.sample(range(size // 2 // MiB, size // MiB), data // MiB))
    with open(dest, "r+b") as f:
        f.truncate(size)
        for r in regions:
            f.seek(r * MiB)
            f.write(rng.randbytes(MiB))
    return regions


def _scatter(path: Path, regions: list[int], fraction: float, rng: random.Random) -> int:
    blocks = rng.sample([r * MiB + k * 4096 for r in regions for k in range(MiB // 4096)],
                        int(len(regions) * MiB // 4096 * fraction))
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b)
            f.write(rng.randbytes(4096))
    return len(blocks) * 4096


def _one(fake: ArmFake, proxy: FaultProxy, base: Path, folder: Path, size: int, data: int,
         change: float) -> dict[str, Any]:
    rng = random.Random(size)
    image = folder / "web.img"
    regions = _image(base, image, size, data, rng)
    rg = f"bench-{size // GiB}g"
    fake.seed(SUB, rg, "westeurope", vnets={
        "prod": {"address_prefix": "10.1.0.0/16", "subnets": {"default": "10.1.0.0/24"}},
        "test": {"address_prefix": "10.2.0.0/16", "subnets": {"default": "10.2.0.0/24"}}},
        storage_account=ACCOUNT)
    vault = Vault.init(folder / "vault")
    try:
        targets.add_target(vault, "azure", "az", {
            "subscription": SUB, "resource_group": rg, "location": "westeurope", "network": "prod",
            "subnet": "default", "test_network": "test", "storage_account": ACCOUNT,
            "container": f"bench{size // GiB}g", "tenant_id": fake.tenant_id, "client_id": fake.client_id,
            "resource_manager": fake.url, "authority_host": fake.url, "ca_bundle": str(fake.ca_file),
            "blob_endpoint": f"http://127.0.0.1:{proxy.port}/{ACCOUNT}"})
        inventory.add_image_source(vault, "web", [image])
        up0 = proxy.bytes_up
        first = cycles.replicate_job(vault, "web")
        initial = {"stored": first.stats.stored_bytes, "replica_written_wire": proxy.bytes_up - up0,
                   "replica_report": first.replica}
        changed = _scatter(image, regions, change, rng)
        up0 = proxy.bytes_up
        delta = cycles.replicate_job(vault, "web")
        cycle = {"changed": changed, "read": delta.bytes_read, "replica_written_wire": proxy.bytes_up - up0,
                 "replica_report": delta.replica}
        late = _scatter(image, regions, change, rng)  # written after the last cycle: the final sync ships it
        calls: list[float] = []
        original = arm.Arm.create_vm

        def timed_create_vm(self: arm.Arm, *a: Any, **kw: Any) -> Any:
            calls.append(time.monotonic())
            return original(self, *a, **kw)

        arm.Arm.create_vm = timed_create_vm  # type: ignore[method-assign]
        up0, req0, arm0 = proxy.bytes_up, proxy.requests, len(fake.requests())
        t0 = time.monotonic()
        try:
            job = failover.start_job(vault, "failover", "web", point="latest")
            job = run_job(vault, job.id)
        finally:
            arm.Arm.create_vm = original  # type: ignore[method-assign]
        total = time.monotonic() - t0
        if job.state != "succeeded":
            raise SystemExit(f"failover of the {size // GiB} GiB disk failed: {job.error}")
        steps = {s.name: s for s in job.steps}
        boot = steps["verify_boot"]
        boot_s = (boot.ended_at - boot.started_at).total_seconds() if boot.ended_at and boot.started_at else 0
        at_failover = {"changed_since_last_cycle": late, "written_wire": proxy.bytes_up - up0,
                       "blob_requests": proxy.requests - req0,
                       "arm_requests": len(fake.requests()) - arm0,
                       "to_create_vm_s": round(calls[0] - t0, 3) if calls else None,
                       "boot_verify_s": round(boot_s, 2), "job_s": round(total, 2),
                       "boot_line": job.outputs.get("boot_line"),
                       "full_vhd_upload_reference": padded_size(size) + FOOTER_SIZE}
        return {"disk_gib": size / GiB, "data_mib": data / MiB, "initial": initial, "delta_cycle": cycle,
                "failover": at_failover}
    finally:
        vault.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--sizes-gib", default="1,8")
    ap.add_argument("--data-mib", type=int, default=32)
    ap.add_argument("--change", type=float, default=0.01)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rehost-bench-azfo-") as tmp_s:
        tmp = Path(tmp_s)
        base = build_tiny_linux(tmp / "base.img", marker="bench", extra_modules=GUEST_MODULES)
        (tmp / "azurite").mkdir()
        with Azurite(tmp / "azurite") as az, ArmFake(tmp / "fake", az) as fake:
            proxy = FaultProxy(int(az.account_url.rsplit(":", 1)[1].split("/")[0]), every=0)
            os.environ["AZURE_CLIENT_SECRET"] = fake.client_secret
            try:
                for gib in (int(x) for x in args.sizes_gib.split(",")):
                    folder = tmp / f"{gib}g"
                    folder.mkdir()
                    row = _one(fake, proxy, base, folder, gib * GiB, args.data_mib * MiB, args.change)
                    rows.append(row)
                    c, f = row["delta_cycle"], row["failover"]
                    first = row["initial"]["replica_written_wire"]
                    print(f"{gib} GiB disk: initial replica {first:,} B on the wire; delta cycle "
                          f"{c['changed']:,} B changed -> {c['replica_written_wire']:,} B written; failover "
                          f"({f['changed_since_last_cycle']:,} B changed since the last cycle) wrote "
                          f"{f['written_wire']:,} B ({f['blob_requests']} blob, {f['arm_requests']} ARM "
                          f"requests), create-VM call after {f['to_create_vm_s']} s, job {f['job_s']} s "
                          f"(boot verify under TCG {f['boot_verify_s']} s); a full VHD upload would be "
                          f"{f['full_vhd_upload_reference']:,} B")
            finally:
                proxy.close()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "azure_failover.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
