"""rehost's Azure Resource Manager CONTRACT FAKE, for tests and ``rehost demo``. NOT Azure.

There is no Azure subscription from this project's hosts, so the Azure target's Resource
Manager client (``rehost.targets.azure.arm``, the real Azure SDKs unchanged) is tested against
this fake. It is a contract fake: stateful, shaped on the Azure REST API specs' examples
(each handler names the example it follows), strict where Azure is strict in ways rehost
depends on (disk states, private IPs, resources in use), and honest about what it does not
do. What it serves, over HTTPS on loopback with a throwaway CA (``ca_file``):

- a sign-in authority for one service principal (``tenant_id``, ``client_id``,
  ``client_secret``): MSAL's client-credentials flow through ``azure.identity``;
- Resource Manager for what the Azure target uses: resource groups, locations, resources by
  tag, permissions, virtual networks, NSGs, NICs, storage accounts (their blob endpoint is
  Azurite), managed disks (Import copies the source blob's bytes, Upload opens a write SAS;
  each disk's bytes are a page blob on Azurite), VMs, long-running operations like ARM's,
  injected faults and a request log;
- VMs that really boot the managed disk's bytes under QEMU (``vm.py``): QEMU has no Hyper-V
  storage or network devices (hv_storvsc/hv_netvsc), so a boot proves the bytes and the boot
  chain, not the guest's Hyper-V drivers.

It runs as its own process (``python -m rehost.testkit.azure_arm serve --folder DIR
--azurite-url URL [--port P]``), so many CLI processes can share one, and keeps its state in
that process and in ``DIR/state.json``. ``ArmFake`` starts and stops one from Python, like
``rehost.testkit.azurite.Azurite``.

A separate process (the ``rehost`` CLI) is pointed at it with the Azure target's options
``--resource-manager URL --authority-host URL --ca-bundle DIR/ca.pem --tenant-id T
--client-id C`` and ``AZURE_CLIENT_SECRET`` in its environment (``DIR/principal.json`` holds
all three ids; ``DIR/endpoint.json`` the URL).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rehost.errors import RehostError
from rehost.process import free_port
from rehost.testkit.service import ServerProcess

if TYPE_CHECKING:
    from rehost.targets.azure.arm import ArmEndpoints
    from rehost.testkit.azurite import Azurite

__all__ = ["ArmFake", "ArmFakeError"]


class ArmFakeError(RehostError):
    """The fake did not start, or refused a control request."""

    user_error = False


class ArmFake(ServerProcess):
    """One Resource Manager fake process; ``with ArmFake(folder, azurite) as fake: ...``.

    ``azurite``: a started ``Azurite`` or its account URL (``http://127.0.0.1:P/devstoreaccount1``).
    ``port``: the HTTPS port (default: a free one at each start).
    """

    log_name = "fake.log"
    stop_wait = 15.0  # its shutdown stops every VM

    def __init__(self, folder: Path, azurite: Azurite | str, *, port: int = 0, accel: str = "tcg",
                 start_timeout: float = 30.0) -> None:
        super().__init__(Path(folder), prefix="", start_timeout=start_timeout)
        self.azurite_url = azurite if isinstance(azurite, str) else azurite.account_url
        self.accel = accel
        #: 0: a free port at each start; a restart on the same port keeps clients' cached tokens valid
        self.want_port = port
        self.port = 0
        self._ssl: ssl.SSLContext | None = None

    # -- where and who ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``: both the Resource Manager endpoint and the authority host."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The fake's CA certificate (PEM): what clients trust (``connection_verify``)."""
        return self.folder / "ca.pem"

    def _principal(self) -> dict[str, str]:
        from rehost.testkit.azure_arm.core import principal

        self.folder.mkdir(parents=True, exist_ok=True)
        return {k: str(v) for k, v in principal(self.folder).items()}

    @property
    def tenant_id(self) -> str:
        return self._principal()["tenant_id"]

    @property
    def client_id(self) -> str:
        return self._principal()["client_id"]

    @property
    def client_secret(self) -> str:
        """The service principal's secret: a secret, even for a fake (do not log it)."""
        return self._principal()["client_secret"]

    def endpoints(self) -> ArmEndpoints:
        """What ``rehost.targets.azure.arm`` needs to talk to this fake."""
        from rehost.targets.azure.arm import ArmEndpoints

        return ArmEndpoints(self.url, self.url, str(self.ca_file))

    # -- process -----------------------------------------------------------------------------------

    def start(self) -> ArmFake:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._principal()
        self.port = self.want_port or free_port()
        self._spawn([sys.executable, "-m", "rehost.testkit.azure_arm", "serve", "--folder", str(self.folder),
                     "--azurite-url", self.azurite_url, "--port", str(self.port), "--accel", self.accel],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready()
        return self

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ArmFakeError(f"the Resource Manager fake exited ({self._proc.returncode}): "
                                   f"{self._log_tail()}")
            if self.ca_file.exists():
                try:
                    self._control("GET", "/_fake/health")
                    return
                except (OSError, ArmFakeError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise ArmFakeError(f"the Resource Manager fake did not answer within {self.start_timeout:.0f}s: "
                           f"{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (its shutdown stops every VM) and any QEMU it left behind; the
        folder stays (it is the caller's: a restart finds the fake's state there)."""
        from rehost.testkit.azure_arm.vm import kill_pid, qemu_pids

        self._end(self.stop_signal, self.stop_wait)
        for pid in qemu_pids(self.folder):
            kill_pid(pid)

    # -- control -----------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=60) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise ArmFakeError(f"fake control {path}: {e.code} {e.read()[:500]!r}") from None

    def seed(self, subscription: str, resource_group: str, location: str, *,
             vnets: dict[str, dict[str, Any]] | None = None, storage_account: str | None = None,
             read_only: bool = False, locations: list[str] | None = None) -> None:
        """Make a subscription (with ``location`` among its locations), a resource group,
        virtual networks ``{name: {"address_prefix", "subnets": {name: prefix},
        "peerings": [vnet names]}}`` and a storage account whose blob endpoint is Azurite.
        ``read_only``: the principal may only read in that group (``*/read``)."""
        self._control("POST", "/_fake/seed", {
            "subscription": subscription, "resource_group": resource_group, "location": location,
            "vnets": vnets or {}, "storage_account": storage_account, "read_only": read_only,
            "locations": locations or []})

    def inject(self, status: int, method: str | None = None, path_contains: str | None = None,
               times: int = 1, retry_after: float | None = None) -> None:
        """The next ``times`` Resource Manager requests that match (method, a piece of the
        path; None matches any) get ``status`` with ARM's error body (409 ``Conflict``, 429
        ``TooManyRequests`` with Retry-After, 500 ``InternalServerError``, ...)."""
        self._control("POST", "/_fake/inject", {"status": status, "method": method,
                                                "path_contains": path_contains, "times": times,
                                                "retry_after": retry_after})

    def clear_faults(self) -> None:
        self._control("POST", "/_fake/clear-faults", {})

    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: ``{"method", "path", "status", "api_version"}`` (no query, no
        token, no SAS), Resource Manager and sign-in alike, oldest first."""
        found: list[dict[str, Any]] = self._control("GET", "/_fake/requests")
        return found
