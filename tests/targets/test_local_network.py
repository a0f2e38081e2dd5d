"""The local target's reachable machines: forwarded guest ports (``endpoint``) and peers (one
machine reaching another) on the isolated network, with two tiny Linux guests (two boots)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.errors import UsageError
from rehost.targets.base import Placement, PointDisk
from rehost.targets.local import LocalTarget, Peer, _nics, _peer_addresses
from rehost.testkit.tinylinux import set_marker, set_mode
from rehost.vault import instant
from rehost.vault.failover import DEFAULT_BOOT_MARKER
from rehost.vault.inventory import get_machine, spec_of
from tests.targets.helpers import World, world


def test_peer_addresses_follow_first_appearance() -> None:
    peers = [Peer("db", 5432, "127.0.0.1", 40001), Peer("cache", 6379, "127.0.0.1", 40002),
             Peer("db", 80, "127.0.0.1", 40003)]  # fmt: skip
    assert _peer_addresses(peers) == {"db": "10.0.2.100", "cache": "10.0.2.101"}
    with pytest.raises(UsageError):
        _peer_addresses([Peer("db", 0, "127.0.0.1", 1)])


def test_forwards_go_on_the_first_nic_only() -> None:
    extra = ",hostfwd=tcp:127.0.0.1:4000-:80"
    assert _nics("isolated", [], extra) == ["-nic", "user,restrict=on,model=virtio-net-pci" + extra]
    assert _nics("production", ["52:54:00:00:00:01", "52:54:00:00:00:02"], extra) == [
        "-nic", "user,model=virtio-net-pci,mac=52:54:00:00:00:01" + extra,
        "-nic", "user,model=virtio-net-pci,mac=52:54:00:00:00:02"]  # fmt: skip
    assert _nics("none", [], extra) == ["-nic", "none"]


def http_get(url: str, timeout: float = 60) -> tuple[int, str]:
    """Status and body. A forward accepts connections before the guest's httpd listens (the
    connection is then closed with nothing sent back): retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def local(tiny_image: Path, tmp_path: Path, need_qemu: None) -> Iterator[tuple[World, LocalTarget]]:
    set_marker(tiny_image, "netguest")
    set_mode(tiny_image, "stay")
    with world(tmp_path, "local", tiny_image) as w:
        target = w.target()
        assert isinstance(target, LocalTarget)
        try:
            yield w, target
        finally:
            for vm in ("db", "web"):
                placement = target.find(vm)
                if placement is not None:
                    target.remove(placement)
                instant.stop_point_servers(w.vault, vm)


def _create(w: World, target: LocalTarget, vm: str) -> Placement:
    machine = get_machine(w.vault, w.machine)
    point = w.vault.repo.load_point_exact(w.points[-1])
    disks: list[PointDisk] = instant.start_point_servers(w.vault, machine, point, vm)
    return target.create(spec_of(machine), vm, disks)


@pytest.mark.slow
def test_ports_and_peers_on_the_isolated_network(local: tuple[World, LocalTarget]) -> None:
    w, target = local
    started = time.monotonic()
    db = target.start(_create(w, target, "db"), "isolated", ports=[80])
    assert target.start(db, "isolated", ports=[80]) == db  # found running: the same forwards
    assert set(db.details["ports"]) == {"80"} and "peers" not in db.details
    host, port = target.endpoint(db, 80) or ("", 0)
    assert host == "127.0.0.1" and db.details["ports"]["80"] == port
    assert target.endpoint(db, 22) is None
    assert target.find("db") == db

    peer = Peer("db", 80, host, port)
    web = target.start(_create(w, target, "web"), "isolated", ports=[80, 8080], peers=[peer])
    assert web.details["peers"] == {"db": "10.0.2.100"}
    assert set(web.details["ports"]) == {"80", "8080"}
    web_host, web_port = target.endpoint(web, 80) or ("", 0)
    for placement in (db, web):
        target.boot_verdict(placement, DEFAULT_BOOT_MARKER, 180)
    booted = time.monotonic() - started

    status, body = http_get(f"http://{host}:{port}/")
    assert status == 200 and "marker=netguest" in body
    assert http_get(f"http://{host}:{port}/cgi-bin/set?dsn=db.internal:5432") == (200, "stored dsn\n")

    # web reaches db only through its peer address, and only what db holds shows there
    web_url = f"http://{web_host}:{web_port}/cgi-bin/fetch?"
    assert http_get(web_url + "http://10.0.2.100/cgi-bin/get?dsn") == (200, "db.internal:5432")
    assert http_get(f"http://{web_host}:{web_port}/cgi-bin/get?dsn")[0] == 404  # web's own store
    # isolated: nothing else is reachable from the guest, not even the host
    status, body = http_get(web_url + f"http://10.0.2.2:{port}/")
    assert status == 502, body
    status, body = http_get(web_url + "http://10.0.2.101/")  # no such peer
    assert status == 502, body
    checked = time.monotonic() - started
    print(f"\ntwo guests booted under TCG in {booted:.1f}s; all checks after {checked:.1f}s")

    target.stop(web, graceful_timeout=10)
    assert target.endpoint(web, 80) == (web_host, web_port)  # what the placement says
