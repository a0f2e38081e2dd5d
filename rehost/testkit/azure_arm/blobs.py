"""The fake's storage side, on Azurite (a real blob service): the blobs behind managed disks,
their SAS, and the boot diagnostics logs. Test fake, not Azure.

Each managed disk's bytes live in a page blob of its own, ``md-<32 hex>/abcd``, shaped on the
URLs Azure hands out (``https://md-xxxx.blob.storage.azure.net/<container>/abcd?sv=...``).
Access is granted with a SAS naming a stored access policy of that container (``si=``), so
revoking access (endGetAccess) really invalidates the SAS: Azurite checks the policy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY

MiB = 1 << 20
DISK_BLOB = "abcd"


class Storage:
    """Azurite's account through its key (the fake plays the storage service's owner)."""

    def __init__(self, account_url: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.account_url = account_url.rstrip("/")
        self.service = BlobServiceClient(self.account_url,
                                         credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})

    def locate(self, url: str) -> tuple[str, str, str | None] | None:
        """(container, blob, snapshot) for a URL of a blob in this account, else None."""
        parts = urlsplit(url)
        base = urlsplit(self.account_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            return None
        path = unquote(parts.path)
        prefix = base.path.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        container, _, blob = path[len(prefix):].partition("/")
        if not container or not blob:
            return None
        snapshot = None
        for item in parts.query.split("&"):
            k, _, v = item.partition("=")
            if k.lower() == "snapshot":
                snapshot = unquote(v)
        return container, blob, snapshot

    def blob(self, container: str, name: str) -> Any:
        return self.service.get_blob_client(container, name)

    def properties(self, container: str, name: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.blob(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None

    def read(self, container: str, name: str, offset: int, length: int) -> bytes:
        return bytes(self.blob(container, name).download_blob(offset=offset, length=length).readall())

    def new_disk_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.service.get_container_client(container).create_container()

    def create_page_blob(self, container: str, size: int) -> None:
        self.new_disk_container(container)
        self.blob(container, DISK_BLOB).create_page_blob(size)

    def copy_in(self, container: str, source: tuple[str, str]) -> None:
        """Copy a blob of the account into ``container/abcd`` (server-side; Azurite copies at
        once, a real copy would be polled)."""
        self.new_disk_container(container)
        target = self.blob(container, DISK_BLOB)
        r = target.start_copy_from_url(self.blob(*source).url)
        if str(r.get("copy_status")) != "success":
            raise RuntimeError(f"copy into {container} ended {r.get('copy_status')}")

    def grant(self, container: str, policy: str, *, write: bool, seconds: int) -> str:
        """A SAS URL for the disk blob bound to the container's stored access policy ``policy``."""
        from azure.storage.blob import AccessPolicy, ContainerSasPermissions, generate_blob_sas

        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(60, seconds))
        self.service.get_container_client(container).set_container_access_policy(
            {policy: AccessPolicy(permission=ContainerSasPermissions(read=True, write=write),
                                  expiry=expiry, start=start)})
        sas = generate_blob_sas(ACCOUNT, container, DISK_BLOB, account_key=ACCOUNT_KEY, policy_id=policy)
        return f"{self.blob(container, DISK_BLOB).url}?{sas}"

    def revoke(self, container: str) -> None:
        self.service.get_container_client(container).set_container_access_policy({})

    def read_sas(self, container: str, name: str, minutes: int = 60) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(ACCOUNT, container, name, account_key=ACCOUNT_KEY,
                                permission=BlobSasPermissions(read=True),
                                expiry=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=max(1, minutes)))
        return f"{self.blob(container, name).url}?{sas}"

    def drop_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.service.get_container_client(container).delete_container()

    def upload_text(self, container: str, name: str, data: bytes) -> None:
        self.new_disk_container(container)
        self.blob(container, name).upload_blob(data, overwrite=True)

    def download_sparse(self, container: str, dest: Path) -> int:
        """The disk blob into ``dest`` as a sparse file: only the page ranges that hold data
        are read. Returns the blob's size."""
        blob = self.blob(container, DISK_BLOB)
        size = int(blob.get_blob_properties().size)
        ranges, _ = blob.get_page_ranges()
        with open(dest, "wb") as f:
            f.truncate(size)
            for r in ranges:
                start, end = int(r["start"]), int(r["end"]) + 1
                for off in range(start, end, 4 * MiB):
                    n = min(4 * MiB, end - off)
                    f.seek(off)
                    f.write(blob.download_blob(offset=off, length=n).readall())
        return size
