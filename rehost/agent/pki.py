"""The server's certificate authority for agents, one-time passphrases and enrollment.

What it keeps (in a ``rehost.agent.ca_store``: the vault's database, or a folder of files):

- ``ca-key`` / ``ca-cert``: an ECDSA P-256 CA, only used to sign certificates;
- ``server-key`` / ``server-cert``: the replication server's own certificate
  (CN ``rehost-server``): the enrollment endpoint's TLS certificate (agents pin its
  fingerprint) and the client certificate for the agents' API and NBD exports;
- the state: passphrases (SHA-256 only, with machine and expiry), enrolled machines
  (certificate serial, fingerprint, inventory), revoked serials, changed one step at a time.

A passphrase is random (about 120 bits), so a plain SHA-256 is enough to store it; it is
spent by the first enrollment that uses it, expires after ``ttl``, and never appears in a
log or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import secrets
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rehost.agent import SERVER_CN
from rehost.agent.ca_store import KEYS, CAStore, FolderStore
from rehost.agent.http import send_json
from rehost.agent.tls import (
    cert_pem,
    client_context,
    fingerprint_pem,
    key_pem,
    load_key,
    new_key,
    server_context,
)
from rehost.fs import write_atomic, write_private

PASSPHRASE_TTL = 3600.0
CA_YEARS = 20
CERT_YEARS = 10
MAX_BODY = 1 << 20
log = logging.getLogger("rehost.agents")


class EnrollmentRefused(Exception):
    """A passphrase or CSR was not accepted. The message never contains the passphrase."""


@dataclass
class Enrollment:
    machine: str
    certificate: bytes  # PEM
    ca: bytes  # PEM
    server_serial: int
    serial: int


def _hash(passphrase: str) -> str:
    return hashlib.sha256(passphrase.strip().encode()).hexdigest()


class CertificateAuthority:
    """The agents' CA, kept in ``store`` (by default the files of ``folder``).

    ``folder`` also holds what TLS needs as files (the CA certificate, the server's
    certificate and key; libnbd and ``ssl`` read paths), written from the store: with a
    database store it is this host's copy, and the CA's own key is never among them.
    """

    def __init__(self, folder: Path, store: CAStore | None = None) -> None:
        self.folder = Path(folder)
        self.store: CAStore = store or FolderStore(self.folder)
        items = self.store.load()
        if not items:
            self.store.create(_new_ca(), _empty_state())
            items = self.store.load()
        if not isinstance(self.store, FolderStore):
            _copy_out(self.folder, items)

    # -- files --------------------------------------------------------------------------

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca-cert.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server-cert.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @staticmethod
    def _sign(
        ca: x509.Certificate, ca_key: Any, public_key: Any, cn: str, sans: list[x509.GeneralName]
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365 * CERT_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    # -- what the server shows --------------------------------------------------------

    @property
    def server_fingerprint(self) -> str:
        """What ``rehost-agent register --fingerprint`` pins (printed with a passphrase)."""
        return fingerprint_pem(self.server_cert.read_bytes())

    @property
    def server_serial(self) -> int:
        return x509.load_pem_x509_certificate(self.server_cert.read_bytes()).serial_number

    def machine(self, name: str) -> dict[str, Any] | None:
        """What enrollment recorded about ``name`` (serial, fingerprint, inventory), or None."""
        entry: dict[str, Any] | None = self.store.read_state()["machines"].get(name)
        return entry

    def machines(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self.store.read_state()["machines"]
        return result

    # -- passphrases ------------------------------------------------------------------

    def issue_passphrase(self, machine: str, ttl: float = PASSPHRASE_TTL) -> str:
        """A new one-time passphrase for ``machine``, valid ``ttl`` seconds.

        Issuing another for the same machine cancels the previous one.
        """
        words = secrets.token_bytes(15)
        passphrase = "-".join(base64.b32encode(words).decode().lower()[i : i + 6] for i in range(0, 24, 6))

        def issue(state: dict[str, Any]) -> None:
            state["passphrases"] = {
                h: p
                for h, p in state["passphrases"].items()
                if p["machine"] != machine and p["expires"] > time.time()
            }
            state["passphrases"][_hash(passphrase)] = {"machine": machine, "expires": time.time() + ttl}

        self.store.update_state(issue)
        return passphrase

    def enroll(
        self,
        passphrase: str,
        csr: bytes,
        inventory: dict[str, Any] | None = None,
        addresses: list[str] | None = None,
    ) -> Enrollment:
        """Spend ``passphrase`` and sign the agent's CSR; the certificate names the machine
        the passphrase was issued for (not what the CSR asks). ``addresses`` become IP SANs."""
        try:
            request = x509.load_pem_x509_csr(csr)
        except ValueError:
            raise EnrollmentRefused("the certificate request is not a valid PEM CSR") from None
        if not request.is_signature_valid:
            raise EnrollmentRefused("the certificate request's signature is invalid")
        entry = self.store.update_state(lambda state: state["passphrases"].pop(_hash(passphrase), None))
        if entry is None:  # spent above, whatever happens next
            raise EnrollmentRefused("unknown or already used passphrase")
        if entry["expires"] < time.time():
            raise EnrollmentRefused("the passphrase has expired: issue a new one")
        machine = str(entry["machine"])
        sans: list[x509.GeneralName] = [x509.DNSName(machine)]
        for a in addresses or []:
            try:
                ip = ipaddress.ip_address(a.split("%")[0])
            except ValueError:
                continue
            if x509.IPAddress(ip) not in sans:
                sans.append(x509.IPAddress(ip))
        items = self.store.load()
        ca = x509.load_pem_x509_certificate(items["ca-cert"])
        cert = self._sign(ca, load_key(items["ca-key"]), request.public_key(), machine, sans)
        pem = cert_pem(cert)

        def record(state: dict[str, Any]) -> None:
            old = state["machines"].get(machine)
            if old:  # re-enrollment replaces (and revokes) the previous certificate
                state["revoked"].append(str(old["serial"]))
            state["machines"][machine] = {
                "serial": str(cert.serial_number),
                "fingerprint": fingerprint_pem(pem),
                "enrolled_at": datetime.now(UTC).isoformat(),
                "inventory": inventory or {},
                "address": (addresses or [""])[0],
            }

        self.store.update_state(record)
        return Enrollment(machine, pem, items["ca-cert"], self.server_serial, cert.serial_number)

    # -- revocation -------------------------------------------------------------------

    def revoke(self, machine: str) -> int | None:
        """Revoke the machine's certificate (migration completed, machine removed)."""

        def revoke(state: dict[str, Any]) -> int | None:
            entry = state["machines"].pop(machine, None)
            if entry is None:
                return None
            state["revoked"].append(str(entry["serial"]))
            return int(entry["serial"])

        return self.store.update_state(revoke)

    def revoked(self) -> set[int]:
        return {int(s) for s in self.store.read_state()["revoked"]}

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked()

    # -- the server's client credentials ----------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        return client_context(self.server_cert, self.server_key, self.ca_cert)

    def nbd_client_dir(self) -> Path:
        """A folder libnbd's ``set_tls_certificates`` reads: ca-cert.pem, client-cert.pem,
        client-key.pem (the server's certificate, used as an NBD client certificate)."""
        d = self.folder / "nbd-client"
        d.mkdir(mode=0o700, exist_ok=True)
        for src, dst in (
            (self.ca_cert, "ca-cert.pem"),
            (self.server_cert, "client-cert.pem"),
            (self.server_key, "client-key.pem"),
        ):
            target = d / dst
            if not target.is_file() or target.read_bytes() != src.read_bytes():
                tmp = target.with_name(dst + ".tmp")
                shutil.copyfile(src, tmp)
                tmp.chmod(0o600)
                tmp.replace(target)
        return d


def _empty_state() -> dict[str, Any]:
    return {"passphrases": {}, "machines": {}, "revoked": []}


def _new_ca() -> dict[str, bytes]:
    """A new CA and the server's certificate it signs, as the store's items."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rehost agents CA")])
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    server_key = new_key()
    server = CertificateAuthority._sign(ca, key, server_key.public_key(), SERVER_CN,
                                        [x509.DNSName(SERVER_CN)])
    return {"ca-key": key_pem(key), "ca-cert": cert_pem(ca), "server-key": key_pem(server_key),
            "server-cert": cert_pem(server)}


def _copy_out(folder: Path, items: dict[str, bytes]) -> None:
    """This host's files of a CA kept elsewhere: what TLS reads by path (never the CA key)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("ca-cert", "server-cert", "server-key"):
        path = folder / f"{name}.pem"
        if not path.is_file() or path.read_bytes() != items[name]:
            (write_private if name in KEYS else write_atomic)(path, items[name])


# -- the enrollment endpoint ----------------------------------------------------------


class EnrollmentServer:
    """HTTPS (never plain HTTP) endpoint ``POST /enroll`` for ``rehost-agent register``.

    Agents pin this server's certificate by its fingerprint. The body is JSON
    ``{passphrase, csr, inventory}``; the answer ``{machine, certificate, ca, server_serial}``.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        host: str = "127.0.0.1",
        port: int = 0,
        on_enroll: Callable[[str, str], None] | None = None,
    ) -> None:
        self.ca = ca
        handler = _enroll_handler(ca, on_enroll or (lambda machine, address: None))
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        ctx = server_context(ca.server_cert, ca.server_key, None)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    def start(self) -> EnrollmentServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rehost-enroll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> EnrollmentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _enroll_handler(
    ca: CertificateAuthority, on_enroll: Callable[[str, str], None]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "rehost-enroll"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass  # bodies carry passphrases: never logged; the caller logs outcomes

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            send_json(self, code, body)

        def do_POST(self) -> None:
            if self.path != "/enroll":
                self._reply(404, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY:
                    raise ValueError("bad length")
                body = json.loads(self.rfile.read(length))
                passphrase = str(body["passphrase"])
                csr = str(body["csr"]).encode()
                inventory = body.get("inventory") or {}
            except (ValueError, KeyError, TypeError):
                self._reply(400, {"error": "expected JSON {passphrase, csr, inventory}"})
                return
            addresses = [self.client_address[0]]
            for nic in inventory.get("nics", []) if isinstance(inventory, dict) else []:
                addresses += [str(a).split("/")[0] for a in nic.get("addresses", [])]
            try:
                result = ca.enroll(passphrase, csr, inventory, addresses)
            except EnrollmentRefused as e:
                log.warning("refused an enrollment from %s: %s", self.client_address[0], e)
                self._reply(403, {"error": str(e)})
                return
            on_enroll(result.machine, self.client_address[0])
            self._reply(
                200,
                {
                    "machine": result.machine,
                    "certificate": result.certificate.decode(),
                    "ca": result.ca.decode(),
                    "server_serial": str(result.server_serial),
                },
            )

    return Handler
