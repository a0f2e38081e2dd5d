"""The tiny Linux image is built the way extlinux and the kernel need it (no boot here)."""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
from pathlib import Path

import pytest

from rehost.testkit.diskimage import partition_extent
from rehost.testkit.tinylinux import (
    BASE_MODULES,
    TinyLinuxError,
    build_initramfs,
    extlinux_conf,
    find_kernel,
    read_file,
    read_marker,
    resolve_modules,
    set_marker,
    set_mode,
    write_files,
)

MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")


def _kernel_or_skip() -> None:
    try:
        find_kernel()
    except TinyLinuxError as exc:
        pytest.skip(str(exc))


def test_modules_load_in_dependency_order() -> None:
    _kernel_or_skip()
    mods = [p.name.removesuffix(".ko") for p in resolve_modules(find_kernel().modules_dir,
                                                               BASE_MODULES)]  # fmt: skip
    for first, then in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio", "virtio_blk"),
        ("crc16", "ext4"),
        ("mbcache", "ext4"),
        ("jbd2", "ext4"),
        ("crc32c_generic", "jbd2"),  # a softdep: modules.dep alone misses it
    ]:
        assert mods.index(first) < mods.index(then), mods
    assert len(mods) == len(set(mods))


def test_initramfs_has_console_init_and_modules() -> None:
    _kernel_or_skip()
    cpio = gzip.decompress(build_initramfs(find_kernel()))
    listing = subprocess.run(
        ["cpio", "-itv"], input=cpio, capture_output=True, check=True
    ).stdout.decode()
    names = {line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.splitlines()}  # fmt: skip
    assert {"init", "bin/busybox", "dev/console", "lib/modules/ext4.ko",
            "lib/modules/virtio_blk.ko", "lib/modules/load-order"} <= names  # fmt: skip
    console = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console.startswith("c")  # a character device node, made without mknod


def test_extlinux_default_label_powers_off() -> None:
    conf = extlinux_conf()
    assert "DEFAULT rehost\n" in conf
    default_append = conf.split("LABEL rehost\n", 1)[1].split("LABEL", 1)[0]
    assert "rehost.stay" not in default_append  # mode comes from /rehost-mode
    assert "rehost.stay=1" in conf and "console=ttyS0" in conf


def test_image_layout_matches_extlinux_constraints(tiny_linux_base: Path) -> None:
    img = tiny_linux_base.read_bytes()
    assert len(img) == 64 * 1024 * 1024
    if MBR_BIN.exists():
        assert img[:440] == MBR_BIN.read_bytes()[:440]
    assert img[446] == 0x80  # partition 1 is active (mbr.bin boots the active partition)
    assert img[446 + 4] == 0x83
    start, _size = partition_extent(tiny_linux_base)
    assert start == 1024 * 1024
    sb = img[start + 1024 : start + 2048]
    assert struct.unpack_from("<H", sb, 0x38)[0] == 0xEF53
    assert 1024 << struct.unpack_from("<I", sb, 0x18)[0] == 4096
    compat, incompat = struct.unpack_from("<II", sb, 0x5C)
    assert not incompat & 0x80, "64bit must be off for extlinux"
    assert not incompat & 0x2000, "metadata_csum_seed must be off for extlinux"
    assert not compat & 0x1000, "orphan_file must be off for extlinux"


def test_marker_and_mode_round_trip(tiny_image: Path) -> None:
    assert read_marker(tiny_image) == "initial"
    set_marker(tiny_image, "second")
    assert read_marker(tiny_image) == "second"
    assert read_file(tiny_image, "rehost-mode") == b"poweroff\n"
    set_mode(tiny_image, "stay")
    assert read_file(tiny_image, "/rehost-mode") == b"stay\n"
    write_files(tiny_image, {"data/a.bin": b"\x00\x01"})
    assert read_file(tiny_image, "data/a.bin") == b"\x00\x01"


def test_reading_does_not_modify_the_image(tiny_image: Path) -> None:
    before = hashlib.sha256(tiny_image.read_bytes()).hexdigest()
    read_marker(tiny_image)
    assert hashlib.sha256(tiny_image.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("bad", ["", "two words", "line\nbreak", "é", "x" * 201])
def test_bad_markers_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(TinyLinuxError, match="marker"):
        set_marker(tmp_path / "nope.img", bad)


def test_too_small_image_is_refused(tmp_path: Path) -> None:
    _kernel_or_skip()
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(TinyLinuxError, match="too small"):
        from rehost.testkit.tinylinux import build_tiny_linux

        build_tiny_linux(tmp_path / "x.img", size_mib=8)
