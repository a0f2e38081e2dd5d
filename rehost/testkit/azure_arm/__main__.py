"""``python -m rehost.testkit.azure_arm serve``: the Resource Manager contract fake as a process.

A TEST FAKE, NOT AZURE: see ``rehost.testkit.azure_arm``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rehost.process import free_port

DESCRIPTION = """\
rehost's Azure Resource Manager CONTRACT FAKE for tests and the demo. This is NOT Azure.

It serves, over HTTPS on 127.0.0.1 with a throwaway CA (DIR/ca.pem), a sign-in authority for
one service principal (DIR/principal.json: tenant id, client id, secret) and the part of
Resource Manager rehost's Azure target uses (resource groups, networks, NICs, NSGs, managed
disks on Azurite blobs, VMs that boot the disks' bytes under QEMU). State lives in this
process and in DIR/state.json. DIR/endpoint.json says where it listens.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehost.testkit.azure_arm", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the fake (a test fake, not Azure) until interrupted",
                           description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--folder", type=Path, required=True, help="state, certificates, VM folders")
    serve.add_argument("--azurite-url", required=True,
                       help="Azurite's account URL, e.g. http://127.0.0.1:10000/devstoreaccount1 (the "
                            "storage account and the blobs behind managed disks)")
    serve.add_argument("--port", type=int, default=0, help="HTTPS port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--accel", default="tcg", help="QEMU accelerator for the VMs (default: tcg)")
    args = parser.parse_args(argv)

    import uvicorn

    from rehost.testkit.azure_arm.app import Fake, build_app
    from rehost.testkit.azure_arm.certs import ensure_certs

    folder: Path = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    certs = ensure_certs(folder)
    port = args.port or free_port()
    fake = Fake(folder, args.azurite_url, accel=args.accel)
    url = f"https://127.0.0.1:{port}"
    info = {"url": url, "ca_file": str(certs.ca_file), "principal_file": str(folder / "principal.json"),
            "tenant_id": fake.state.principal["tenant_id"], "client_id": fake.state.principal["client_id"],
            "pid": os.getpid(), "note": "rehost Resource Manager test fake, not Azure"}
    (folder / "endpoint.json").write_text(json.dumps(info, indent=2))
    print(f"rehost Resource Manager test fake (NOT Azure) on {url}", file=sys.stderr, flush=True)
    uvicorn.run(build_app(fake), host="127.0.0.1", port=port, ssl_keyfile=str(certs.key_file),
                ssl_certfile=str(certs.cert_file), log_level="warning", access_log=False,
                timeout_graceful_shutdown=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
