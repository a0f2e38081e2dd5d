"""The server as ``rehost serve`` runs it: HTTPS with a given certificate, the scheduler in
the background, a clean stop on SIGTERM."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rehost.errors import UsageError
from rehost.portal.server import parse_listen
from rehost.process import free_port
from tests.api.portal import make_disk, make_vault
from tests.cli_helpers import REPO


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:443") == ("::1", 443)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(UsageError, match="HOST:PORT"):
            parse_listen(bad)


def test_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    from rehost.portal.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            serve(tmp_path / "no-vault", None, listen=f"127.0.0.1:{port}", log=lambda _m: None)


def test_serve_speaks_https_and_runs_the_scheduler(tmp_path: Path) -> None:
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"))
    cert, key = self_signed(tmp_path)
    port = free_port()
    code = ("import sys; from pathlib import Path; from rehost.portal.server import serve; "
            "serve(Path(sys.argv[1]), None, listen=sys.argv[2], cert=Path(sys.argv[3]), "
            "key=Path(sys.argv[4]), tick=0.2)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "vault"), f"127.0.0.1:{port}",
                             str(cert), str(key)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        client = httpx.Client(base_url=f"https://127.0.0.1:{port}",
                              verify=ssl.create_default_context(cafile=str(cert)),
                              headers={"Authorization": f"Bearer {tokens['reader']}"})
        deadline = time.monotonic() + 30
        while True:
            try:
                r = client.get("/api/v1/overview")
                if r.json()["scheduler_running"]:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout and proc.stdout.read()
            time.sleep(0.2)
        assert client.get("/api/v1/whoami").json()["role"] == "reader"
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/api/v1/whoami", timeout=5)
        client.close()  # else the server waits out its 5 s grace for this keep-alive connection
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"https://127.0.0.1:{port}/ui/" in out and "stopped" in out


def test_an_encrypted_vault_is_unlocked_once_and_jobs_use_it(tmp_path: Path) -> None:
    from rehost.api.tokens import create_token
    from rehost.errors import WrongPassword
    from rehost.portal.app import create_app
    from rehost.vault import inventory
    from rehost.vault.vault import Vault
    from tests.api.portal import Portal

    vault = Vault.init(tmp_path / "vault", password="s3cret")
    inventory.add_image_source(vault, "web", [make_disk(tmp_path / "disk.raw")])
    token = create_token(vault, "op", "operator")[1]
    vault.close()
    with pytest.raises(WrongPassword):  # refused at start, not at the first request
        create_app(tmp_path / "vault", lambda: "wrong")
    asked: list[int] = []

    def password() -> str:
        asked.append(1)
        return "s3cret"

    from fastapi.testclient import TestClient

    app = create_app(tmp_path / "vault", password)
    with TestClient(app) as client:
        p = Portal(client, app, tmp_path, {"operator": token, "reader": token})
        job = p.wait_job(p.post("/machines/web/replicate").json()["id"])
        assert job["state"] == "succeeded", job
        assert len(p.get("/machines/web/points").json()) == 1
        app.state.jobs.join(10)
    assert asked == [1]
