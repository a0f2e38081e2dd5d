"""TEST DOUBLE: changed-block tracking for vcsim, which has none. Not VMware's CBT.

govmomi 0.24.2's simulator answers no ``QueryChangedDiskAreas`` and never sets a disk
backing's ``changeId``. This shim is an HTTPS reverse proxy in front of vcsim that fills the
gap from its own comparison of the disk files in the simulator's datastore folder:

- ``ReconfigVM_Task`` with ``changeTrackingEnabled`` turns its tracking of the VM on or off
  (the request still goes to vcsim, which records the setting in the VM's config);
- after ``CreateSnapshot_Task`` of a tracked VM with tracking on, it hashes each registered
  disk's flat file in ``granularity`` blocks and names that state with a new ``changeId``
  (``52 xx .../N``, VMware's shape); every later answer that shows that disk's
  ``VirtualDiskFlatVer2BackingInfo`` carries the newest ``changeId`` (the live VM's too:
  real vSphere moves the live disk's id on with each write, the shim does not);
- ``QueryChangedDiskAreas(vm, snapshot, deviceKey, startOffset, changeId)`` is answered here,
  never forwarded: ``*`` gives the blocks that are not all zeros (a flat file has no
  allocation map: "allocated" means "not zero" here), a known ``changeId`` the blocks whose
  hash differs from the newest state, an unknown one an ``InvalidArgument`` fault on
  ``changeId`` (what a host says after a CBT reset). Answers cover at most ``window`` bytes
  from ``startOffset``, so callers must loop as the API documents;
- ``reset()`` forgets every ``changeId`` (a CBT reset: the next query with an old id fails).

Real CBT tracks writes as they happen, keeps ids across snapshot removal, and its answers
may be coarser than the writes; none of that is modelled. Everything else is forwarded to
vcsim as it is (the session cookie included). The proxy speaks TLS with a self-signed
certificate made at start, so clients pin it by its SHA-1 thumbprint as they would an ESXi's.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import re
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

from rehost.testkit.vcsim import Vcsim

#: the SOAP method of a request: the first element inside the envelope's Body
_METHOD = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")
_FORWARD_HEADERS = ("content-type", "cookie", "soapaction", "range", "vmware-api-version", "content-length")
_BACK_HEADERS = ("content-type", "set-cookie", "content-range", "accept-ranges", "last-modified")


def _field(body: bytes, name: str) -> str | None:
    m = re.search(rb"<(?:\w+:)?" + name.encode() + rb"(?:\s[^>]*)?>([^<]*)<", body)
    return m.group(1).decode() if m else None


@dataclass
class TrackedDisk:
    vm: str
    device_key: int
    #: the backing's datastore path as vSphere shows it: ``[LocalDS_0] tiny/tiny.vmdk``
    file_name: str
    #: the flat file the shim hashes
    flat: Path
    uuid: str = field(default_factory=lambda: " ".join(f"{b:02x}" for b in uuid.uuid4().bytes))
    sequence: int = 0
    current: str | None = None
    states: dict[str, list[bytes]] = field(default_factory=dict)


class CbtShim:
    """The proxy; ``with CbtShim(vcsim) as shim: shim.track(...)``. See the module docstring."""

    def __init__(self, upstream: Vcsim, *, granularity: int = 4096, window: int = 16 << 20) -> None:
        self.upstream = upstream
        self.granularity = granularity
        self.window = window
        self.disks: dict[tuple[str, int], TrackedDisk] = {}
        self.tracking: dict[str, bool] = {}
        #: SOAP methods seen, in order (tests check what a cycle asked)
        self.calls: list[str] = []
        #: datastore reads (GET /folder) served, and a delay before each (to catch a cycle midway)
        self.folder_reads = 0
        self.read_delay = 0.0
        #: answer datastore reads with 503 (a host that fails mid-cycle)
        self.fail_reads = False
        self.lock = threading.Lock()
        self.thumbprint = ""
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="rehost-cbtshim-")

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: what ``rehost source add vsphere --host`` is given."""
        return f"127.0.0.1:{self.port}"

    def track(self, vm: str, device_key: int, file_name: str, flat: Path) -> None:
        with self.lock:
            self.disks[(vm, device_key)] = TrackedDisk(vm, device_key, file_name, flat)

    def reset(self) -> None:
        """A CBT reset: every changeId handed out so far is forgotten."""
        with self.lock:
            for d in self.disks.values():
                d.states.clear()
                d.current = None

    # -- the state the shim keeps --------------------------------------------------------

    def _hashes(self, flat: Path) -> list[bytes]:
        out = []
        with open(flat, "rb") as f:
            while block := f.read(self.granularity):
                out.append(hashlib.blake2b(block.ljust(self.granularity, b"\0"), digest_size=16).digest())
        return out

    def _snapshot_taken(self, vm: str) -> None:
        with self.lock:
            if not self.tracking.get(vm):
                return
            for d in self.disks.values():
                if d.vm == vm:
                    d.sequence += 1
                    d.current = f"{d.uuid}/{d.sequence}"
                    d.states[d.current] = self._hashes(d.flat)

    def _changed_areas(self, body: bytes) -> bytes:
        vm, key = _field(body, "_this") or "", int(_field(body, "deviceKey") or -1)
        start, change_id = int(_field(body, "startOffset") or 0), _field(body, "changeId") or ""
        with self.lock:
            d = self.disks.get((vm, key))
            if d is None or not self.tracking.get(vm) or d.current is None:
                file = escape(d.file_name if d else vm)
                return _fault("FileFault", "Error caused by file", f"<file>{file}</file>")
            now = d.states[d.current]
            if change_id == "*":
                zero = hashlib.blake2b(bytes(self.granularity), digest_size=16).digest()
                dirty = [h != zero for h in now]
            elif change_id in d.states:
                old = d.states[change_id]
                dirty = [i >= len(old) or h != old[i] for i, h in enumerate(now)]
            else:
                return _fault("InvalidArgument", "A specified parameter was not correct: changeId",
                              "<invalidProperty>changeId</invalidProperty>")
            capacity = d.flat.stat().st_size
        g = self.granularity
        end = min(capacity, start + self.window)
        areas: list[tuple[int, int]] = []
        for i in range(start // g, -(-end // g)):
            if i < len(dirty) and dirty[i]:
                a, b = max(start, i * g), min(end, (i + 1) * g)
                if areas and areas[-1][0] + areas[-1][1] == a:
                    areas[-1] = (areas[-1][0], areas[-1][1] + b - a)
                else:
                    areas.append((a, b - a))
        inner = "".join(f"<changedArea><start>{a}</start><length>{n}</length></changedArea>"
                        for a, n in areas)
        return _envelope(
            f'<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>{start}</startOffset>'
            f"<length>{end - start}</length>{inner}</returnval></QueryChangedDiskAreasResponse>")

    def _inject_change_ids(self, body: bytes) -> bytes:
        with self.lock:
            ids = {d.file_name: d.current for d in self.disks.values() if d.current}
        for name, change_id in ids.items():
            tag = f"<fileName>{escape(name)}</fileName>".encode()
            out, pos = [], 0
            while (i := body.find(tag, pos)) >= 0:
                j = i + len(tag)
                backing = body.rfind(b"<backing", 0, i)
                if backing >= 0 and b"VirtualDiskFlatVer2BackingInfo" in body[backing:i]:
                    out.append(body[pos:j] + f"<changeId>{escape(change_id)}</changeId>".encode())
                else:
                    out.append(body[pos:j])
                pos = j
            body = b"".join(out) + body[pos:]
        return body

    # -- the proxy ---------------------------------------------------------------------

    def start(self) -> CbtShim:
        cert, key = _self_signed(Path(self._tmp.name))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                shim._handle(self)

            do_GET = do_PUT = do_HEAD = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        digest = hashlib.sha1(der).hexdigest().upper()
        self.thumbprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
        threading.Thread(target=self._server.serve_forever, daemon=True, name="cbt-shim").start()
        return self

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        m = _METHOD.search(body) if h.path.startswith("/sdk") else None
        method = m.group(1).decode() if m else ""
        if method:
            self.calls.append(method)
        if method == "QueryChangedDiskAreas":
            fault = b"<soapenv:Fault>" in (out := self._changed_areas(body))
            self._reply(h, 500 if fault else 200, [("Content-Type", "text/xml; charset=utf-8")], out)
            return
        if h.command == "GET" and h.path.startswith("/folder"):
            self.folder_reads += 1
            if self.read_delay:
                time.sleep(self.read_delay)
            if self.fail_reads:
                self._reply(h, 503, [("Content-Type", "text/plain")], b"unavailable (CbtShim.fail_reads)")
                return
        host, port = self.upstream.address
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() in _FORWARD_HEADERS}
            conn.request(h.command, h.path, body=body if h.command in ("POST", "PUT") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            back = [(k, v) for k, v in resp.getheaders() if k.lower() in _BACK_HEADERS]
            status = resp.status
        finally:
            conn.close()
        if method == "ReconfigVM_Task" and status == 200:
            on = _field(body, "changeTrackingEnabled")
            if on is not None:
                vm = _field(body, "_this") or ""
                with self.lock:
                    self.tracking[vm] = on == "true"
                if on != "true":
                    self.reset()
        elif method == "CreateSnapshot_Task" and status == 200:
            self._snapshot_taken(_field(body, "_this") or "")
        if h.path.startswith("/sdk"):
            data = self._inject_change_ids(data)
        self._reply(h, status, back, b"" if h.command == "HEAD" else data,
                    length=len(data) if h.command != "HEAD" else int(resp.getheader("content-length") or 0))

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes,
               length: int | None = None) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        h.end_headers()
        h.wfile.write(data)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> CbtShim:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _envelope(inner: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope '
        'xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>").encode()


def _fault(kind: str, message: str, detail: str) -> bytes:
    """A SOAP fault in the shape vSphere sends (``<detail><KindFault xsi:type="Kind">``)."""
    return _envelope(
        f"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{escape(message)}</faultstring>"
        f'<detail><{kind}Fault xmlns="urn:vim25" xsi:type="{kind}">{detail}</{kind}Fault></detail>'
        "</soapenv:Fault>")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (the shim's TLS, pinned by thumbprint)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vcsim-cbt-shim")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
