"""rehost readiness: a recovery point served read-only from the vault, inspected once (one
appliance launch), cached per point; the API answers the same report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rehost.guest.inspect import Inspection
from rehost.vault import readiness as vault_readiness
from rehost.vault.vault import Vault
from tests.cli_helpers import rehost


def test_a_machine_without_points_is_a_clear_error(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(tmp_path / "target"))
    rehost(vault, "source", "add-image", "empty", str(disk))
    r = rehost(vault, "readiness", "empty", check=False)
    assert r.code != 0 and "empty has no recovery points yet" in r.err and "rehost replicate empty" in r.err
    r = rehost(vault, "readiness", "nobody", check=False)
    assert r.code != 0 and "no machine named 'nobody'" in r.err


@pytest.mark.slow
def test_readiness_of_a_point_is_inspected_once(tmp_path: Path, tiny_image: Path) -> None:
    pytest.importorskip("guestfs", reason="python3-guestfs is not installed (run scripts/install)")
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(tmp_path / "target"))
    rehost(vault, "target", "add", "memory", "double", "--path", str(tmp_path / "double"))
    rehost(vault, "source", "add-image", "tiny", str(tiny_image))
    rehost(vault, "replicate", "tiny")

    started = time.monotonic()
    first = rehost(vault, "readiness", "tiny", "--target", "here", "--json").json()
    took = time.monotonic() - started
    print(f"\nfirst readiness (NBD servers + one appliance launch): {took:.1f}s, "
          f"inspection {first['inspection']['seconds']:.1f}s")
    assert not first["cached"] and first["target_kind"] == "local" and first["status"] != "fail"
    assert first["inspection"]["kernels"][0]["initrd_modules"]
    names = {r["name"]: r["status"] for r in first["requirements"]}
    assert names["virtio_blk driver"] == "pass"

    v = Vault.open(vault)
    try:
        started = time.monotonic()
        again = vault_readiness.readiness(v, "tiny", target="double")
        cached_s = time.monotonic() - started
    finally:
        v.engine.dispose()
    print(f"cached readiness: {cached_s * 1000:.0f} ms")
    assert again.cached and again.point == first["point"] and cached_s < 1.0
    assert again.readiness.target_kind == "memory"
    assert again.inspection == Inspection.from_json(first["inspection"])
    assert not list((vault / "run").glob("inspect-*"))  # the point servers are gone

    text = rehost(vault, "readiness", "tiny", "--target", "here").out
    assert "cached inspection" in text and "PASS  virtio_blk driver" in text
    assert "kernel: /boot/vmlinuz" in text


def test_one_inspection_per_point_without_libguestfs(tmp_path: Path) -> None:
    """The cache and the NBD plumbing, with a stand-in inspector that reads the served disk."""
    import nbd

    vault = tmp_path / "vault"
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"rehost!!" + b"\0" * ((1 << 20) - 8))
    rehost(vault, "init")
    rehost(vault, "target", "add", "memory", "double", "--path", str(tmp_path / "double"))
    rehost(vault, "source", "add-image", "m1", str(disk))
    rehost(vault, "replicate", "m1")
    calls = []

    def inspector(uris, fmt):  # type: ignore[no-untyped-def]
        h = nbd.NBD()
        h.connect_uri(uris[0])
        calls.append(h.pread(8, 0))
        h.shutdown()
        return Inspection(disks=tuple(uris), os_type="unknown", notes=("stand-in",))

    v = Vault.open(vault)
    try:
        first = vault_readiness.readiness(v, "m1", inspector=inspector)
        second = vault_readiness.readiness(v, "m1", inspector=inspector)
    finally:
        v.engine.dispose()
    assert calls == [b"rehost!!"]  # served read-only from the vault, inspected once
    assert not first.cached and second.cached and second.inspection == first.inspection
    assert first.readiness.target_kind == "memory" and first.readiness.requirements == ()
    assert vault_readiness.cache_path(v, "m1", first.point).is_file()
