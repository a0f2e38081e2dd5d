"""The tiny Linux's network and HTTP service: DHCP on eth0 and busybox httpd with get/set/fetch
CGI scripts, reached from the host through a QEMU user-network port forward (one boot)."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.process import free_port
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import READY_LINE, read_file, set_mode

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_qemu")]


def http_get(url: str, timeout: float = 30) -> tuple[int, str]:
    """Status and body; retried while the forward answers with nothing (guest still booting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def host_web() -> Iterator[int]:
    """A tiny HTTP server on the host's 127.0.0.1 (the guest sees it as 10.0.2.2)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from the host, path={self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_dhcp_http_service_and_guest_wget(tiny_image: Path, host_web: int) -> None:
    set_mode(tiny_image, "stay")
    port = free_port()
    nic = f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:80"
    base = f"http://127.0.0.1:{port}"
    with QemuVM([Drive(tiny_image)], name="tinynet", extra_args=["-nic", nic]) as vm:
        started = time.monotonic()
        net = vm.wait_for(r"REHOST-NET (\S+)\r?\n", 120, fail_pattern=r"REHOST-BOOT-FAIL.*")
        assert net.group(1) == "ip=10.0.2.15"
        vm.wait_for(r"REHOST-BOOT-OK marker=initial\r?\n", 60)
        booted = time.monotonic() - started
        # the service answers once the marker is out, and keeps answering after READY
        status, body = http_get(f"{base}/")
        assert status == 200 and "marker=initial" in body
        vm.wait_for(READY_LINE, 60)

        assert http_get(f"{base}/cgi-bin/get?color") == (404, "no such key: color\n")
        assert http_get(f"{base}/cgi-bin/set?color=deep%20blue") == (200, "stored color\n")
        assert http_get(f"{base}/cgi-bin/get?color") == (200, "deep blue")
        assert http_get(f"{base}/cgi-bin/set?../x=1")[0] == 400

        # the guest's own wget reaches the host (10.0.2.2 is the host on the user network)
        status, body = http_get(f"{base}/cgi-bin/fetch?http://10.0.2.2:{host_web}/guest-asks")
        assert (status, body) == (200, "hello from the host, path=/guest-asks\n")
        status, body = http_get(f"{base}/cgi-bin/fetch?http://10.0.2.2:1/")
        assert status == 502 and "failed" in body
        print(f"\nboot to marker with DHCP and httpd under TCG: {booted:.1f}s")
        assert vm.stop(graceful_timeout=30) == 0
    # the value is data on the root disk
    assert read_file(tiny_image, "var/lib/rehost-kv/color") == b"deep blue"
