"""A real vault behind the portal, made with the real services, for API, CLI and browser tests."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rehost.api.tokens import create_token
from rehost.portal.app import create_app
from rehost.process import free_port
from rehost.vault import inventory, protection, roots, targets
from rehost.vault.vault import Vault

MiB = 1 << 20
ROLES = ("reader", "operator", "admin")


def make_disk(path: Path, size: int = 8 * MiB) -> Path:
    """A sparse raw image with some data in it: a machine to replicate."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MiB)
        f.write(os.urandom(256 * 1024))
    return path


def make_vault(root: Path, disk: Path, *, machine: str = "web", replicate: bool = True) -> dict[str, str]:
    """A vault with a target ``here``, one image machine (replicated once) and a token per role;
    the API may use the test's folder (``rehost config allow-root``), as an admin would allow
    the folder of the images to import."""
    vault = Vault.init(root / "vault")
    try:
        roots.allow_root(vault, root)
        targets.add_local_target(vault, "here", root / "target")
        inventory.add_image_source(vault, machine, [disk])
        if replicate:
            protection.replicate(vault, machine)
        return {role: create_token(vault, f"{role}-token", role)[1] for role in ROLES}
    finally:
        vault.close()


@dataclass
class Portal:
    client: TestClient
    app: FastAPI
    root: Path
    tokens: dict[str, str]
    base_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vault(self) -> Path:
        return self.root / "vault"

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def get(self, path: str, role: str = "reader", **kw: Any) -> httpx.Response:
        return self.client.get(f"/api/v1{path}", headers=self.auth(role), **kw)

    def post(self, path: str, body: Any = None, role: str = "operator", **kw: Any) -> httpx.Response:
        return self.client.post(f"/api/v1{path}", json=body, headers=self.auth(role), **kw)

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll the job as a dashboard would, until it ends."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")
            time.sleep(0.2)

    def open_vault(self) -> Vault:
        return Vault.open(self.vault)


@contextmanager
def live_server(app: FastAPI, **ssl: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1 and a free port, in a thread, for a real browser or HTTP client."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **ssl))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    scheme = "https" if ssl else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def kill_leftovers(needle: str) -> None:
    """Never leave a test VM or an NBD server behind (they run in their own sessions)."""
    out = subprocess.run(["pgrep", "-af", needle], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "pgrep" not in line:
            subprocess.run(["kill", "-9", line.split()[0]], check=False)


@contextmanager
def portal_for(root: Path, tokens: dict[str, str]) -> Iterator[Portal]:
    app = create_app(root / "vault")
    with TestClient(app) as client:
        portal = Portal(client, app, root, tokens)
        try:
            yield portal
        finally:
            app.state.jobs.join(timeout=120)
