"""Azurite, Microsoft's Azure Storage emulator, as a real test service (blob service only).

Why Azurite: it serves page blobs, snapshots, metadata and SAS for real, so the replica-disk
sync (``rehost.targets.azure.pageblob``) is tested against the same REST API as Azure. What
it does not enforce (the 4 MiB Put Page limit, writes past the blob's end) and what it gets
wrong (page-range diffs ignore ``prevsnapshot``) rehost enforces or avoids itself
(docs/design.md, "Azure replica disks").

Installed by ``scripts/install`` with npm, pinned to 3.35.0 (the newest that runs on
Node 20), into ``/opt/rehost-test/azurite`` (``$REHOST_AZURITE_DIR`` overrides it). Each
``Azurite`` gets a free loopback port and a folder of its own, and uses the default (file)
metadata store: page blobs do not work with the SQL one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

from rehost.errors import RehostError
from rehost.process import free_port
from rehost.testkit.service import ServerProcess

VERSION = "3.35.0"
DEFAULT_DIR = Path("/opt/rehost-test/azurite")
#: the well-known development account every Azurite accepts (public, documented by Microsoft)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RehostError):
    """Azurite is missing or did not start."""

    user_error = False


def azurite_bin() -> Path | None:
    """The ``azurite-blob`` launcher scripts/install put in place, or None."""
    folder = Path(os.environ.get("REHOST_AZURITE_DIR") or DEFAULT_DIR)
    candidate = folder / "node_modules" / ".bin" / "azurite-blob"
    if candidate.exists():
        return candidate
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


class Azurite(ServerProcess):
    """One Azurite blob service on a free loopback port; ``with Azurite() as az: ...``."""

    log_name = "azurite.log"
    stop_signal = signal.SIGINT  # its own clean stop; it ignores SIGTERM a while
    stop_wait = 3.0

    def __init__(self, folder: Path | None = None, *, start_timeout: float = 30.0) -> None:
        super().__init__(folder, prefix="rehost-azurite-", start_timeout=start_timeout)
        self.port = 0

    @property
    def account_url(self) -> str:
        """The blob endpoint in Azurite's path style: ``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.account_url};")

    def start(self) -> Azurite:
        exe = azurite_bin()
        if exe is None:
            raise AzuriteError(f"azurite {VERSION} is not installed (run scripts/install)")
        self.port = free_port()
        self._spawn([str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                     "--location", str(self.folder), "--skipApiVersionCheck", "--disableTelemetry",
                     "--loose", "--silent"])
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AzuriteError(f"azurite exited ({self._proc.returncode}): {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    # Any HTTP answer (400 for a bare GET) means the service is up.
                    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1.1"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AzuriteError(f"azurite did not answer within {self.start_timeout:.0f}s: {self._log_tail()}")

