"""Listing an initramfs in Python: archives end to end, each plain or compressed."""

from __future__ import annotations

import gzip
import lzma

import pytest
import zstandard

from rehost.guest.initramfs import InitramfsError, builtin_names, list_initramfs, module_name
from rehost.testkit.guestdisk import initramfs
from rehost.testkit.tinylinux import _Cpio


def _archive(files: dict[str, bytes]) -> bytes:
    c = _Cpio()
    for name, data in files.items():
        c.file(name, data)
    return c.finish()


def test_microcode_prefix_then_gzip_main_archive() -> None:
    data = initramfs("6.1.0-9-amd64", ["virtio_blk", "hv-storvsc"], builtin=["virtio_pci"])
    listing = list_initramfs(data)
    assert listing.archives == ("plain", "gzip")
    assert listing.modules == ("hv_storvsc", "virtio_blk")  # "-" read as "_", as the kernel does
    assert listing.builtin == ("virtio_pci",)
    assert listing.module_versions == ("6.1.0-9-amd64",)


@pytest.mark.parametrize("compress", [
    lambda b: lzma.compress(b, format=lzma.FORMAT_XZ),
    lambda b: zstandard.ZstdCompressor().compress(b),
    lambda b: gzip.compress(b) + gzip.compress(_archive({"lib/modules/x/e1000.ko": b""})),
    lambda b: b,
])
def test_compressions(compress) -> None:  # type: ignore[no-untyped-def]
    main = _archive({"lib/modules/6.1/kernel/virtio_net.ko.zst": b"x", "init": b"#!/bin/sh\n"})
    listing = list_initramfs(compress(main))
    assert "virtio_net" in listing.modules
    assert listing.builtin is None  # no modules.builtin inside: unknown, not "none"


def test_unreadable_data_is_an_error_not_an_empty_list() -> None:
    with pytest.raises(InitramfsError):
        list_initramfs(b"\x89PNG not an initramfs")
    with pytest.raises(InitramfsError):
        list_initramfs(_archive({"a": b"b"})[:200])  # truncated


def test_names() -> None:
    assert module_name("lib/modules/6.1/kernel/drivers/hv/hv_vmbus.ko.xz") == "hv_vmbus"
    assert module_name("lib/modules/6.1/modules.dep") is None
    assert builtin_names("kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n") == ("ext4", "virtio")


def test_the_hosts_own_debian_initramfs() -> None:
    """A real initramfs-tools image (zstd on Debian 12, maybe after an early-microcode archive)."""
    from pathlib import Path

    from rehost.testkit.tinylinux import TinyLinuxError, find_kernel

    try:
        version = find_kernel().version
    except TinyLinuxError:  # no kernel installed: nothing to compare with
        pytest.skip("no kernel installed")
    path = Path(f"/boot/initrd.img-{version}")
    if not path.is_file():
        pytest.skip(f"{path} does not exist")
    listing = list_initramfs(path.read_bytes())
    assert version in listing.module_versions
    on_disk = {module_name(str(p)) for p in Path(f"/lib/modules/{version}").rglob("*.ko*")}
    assert set(listing.modules) <= on_disk and {"ext4", "virtio_blk"} <= set(listing.modules)
    assert listing.builtin is not None and "virtio_pci" not in listing.builtin
