"""The fixed VHD footer against qemu-img, the independent reader (and writer) of VHDs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rehost.targets.azure.vhd import (
    CREATOR_APP,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    MiB,
    VhdError,
    check_fixed_vhd,
    chs_geometry,
    make_footer,
    padded_size,
    parse_footer,
)


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out))


def _fixed_vhd(raw: Path, dest: Path) -> Path:
    """raw bytes + zeros up to a whole MiB + our footer."""
    size = raw.stat().st_size
    with open(raw, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(MiB):
            out.write(chunk)
        out.truncate(padded_size(size))
        out.seek(padded_size(size))
        out.write(make_footer(size))
    return dest


@pytest.mark.parametrize("size", [5 * MiB, 20 * MiB + 4096 + 7, 64 * MiB - 512])
def test_qemu_reads_it_as_a_fixed_vhd_of_the_exact_size(tmp_path: Path, size: int) -> None:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(size))
    vhd = _fixed_vhd(raw, tmp_path / "disk.vhd")
    padded = padded_size(size)
    assert padded % MiB == 0 and padded - size < MiB
    info = _info(vhd)
    assert info["format"] == "vpc"
    assert info["virtual-size"] == padded
    # QEMU 7.2 shows no subformat for vpc; a fixed VHD is the one it maps byte for byte
    # onto the file (a dynamic one maps through its block table, holes have no offset).
    mapped = json.loads(subprocess.run(["qemu-img", "map", "-f", "vpc", "--output=json", str(vhd)],
                                       check=True, capture_output=True, text=True).stdout)
    assert mapped and all(m["offset"] == m["start"] for m in mapped)
    assert sum(m["length"] for m in mapped) == padded
    check_fixed_vhd(vhd.read_bytes()[-FOOTER_SIZE:], vhd.stat().st_size)
    # The data part is the disk, padded with zeros: qemu-img compares it with the raw source.
    padded_raw = tmp_path / "padded.raw"
    padded_raw.write_bytes(raw.read_bytes() + bytes(padded - size))
    r = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(vhd), str(padded_raw)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    tail = vhd.read_bytes()[size:padded]
    assert tail == bytes(padded - size)


def test_fields_match_the_footer_qemu_img_writes(tmp_path: Path) -> None:
    size = 20 * MiB
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\1" * size)
    theirs = tmp_path / "theirs.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
                    str(raw), str(theirs)], check=True)
    t = parse_footer(theirs.read_bytes()[-FOOTER_SIZE:])
    ours = parse_footer(make_footer(size))
    assert theirs.stat().st_size == size + FOOTER_SIZE
    for field in ("current_size", "original_size", "disk_type", "features", "version", "data_offset",
                  "saved_state"):
        assert getattr(ours, field) == getattr(t, field), field
    # qemu marks "trust the size" with its own creator 'qem2' and the maximum CHS geometry;
    # Hyper-V (and we) write 'win ' and the specification's geometry.
    assert t.creator_app == b"qem2" and ours.creator_app == CREATOR_APP
    assert ours.geometry == chs_geometry(size)


@pytest.mark.parametrize("size", [5 * MiB, 20 * MiB, 127 * MiB, 1 << 30, 33 << 30, 200 << 30])
def test_geometry_is_the_one_qemu_computes(tmp_path: Path, size: int) -> None:
    """Without force_size, qemu-img looks for the first sector count >= the size whose
    specification geometry covers it: our chs_geometry, iterated the same way, must find
    the same geometry (this exercises every branch of the algorithm)."""
    vhd = tmp_path / "q.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(vhd), str(size)],
                   check=True)
    with open(vhd, "rb") as f:  # a sparse file: read only the footer
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        theirs = parse_footer(f.read())
    sectors = size // 512
    while True:
        c, h, s = chs_geometry(sectors * 512)
        if c * h * s >= sectors or (c, h, s) == (65535, 16, 255):
            break
        sectors += 1
    assert theirs.geometry == (c, h, s)
    vhd.unlink()


def test_bad_footers_are_refused_with_the_reason() -> None:
    good = make_footer(3 * MiB)
    assert check_fixed_vhd(good, 3 * MiB + FOOTER_SIZE).disk_type == DISK_TYPE_FIXED
    with pytest.raises(VhdError, match="cookie"):
        parse_footer(b"x" + good[1:])
    with pytest.raises(VhdError, match="checksum"):
        parse_footer(good[:100] + b"\xff" + good[101:])
    dynamic = bytearray(good)
    dynamic[60:64] = (3).to_bytes(4, "big")
    dynamic[64:68] = b"\0\0\0\0"
    from rehost.targets.azure.vhd import checksum

    dynamic[64:68] = checksum(bytes(dynamic)).to_bytes(4, "big")
    with pytest.raises(VhdError, match="not fixed"):
        parse_footer(bytes(dynamic))
    with pytest.raises(VhdError, match="does not match"):
        check_fixed_vhd(good, 4 * MiB + FOOTER_SIZE)
    with pytest.raises(VhdError, match="512 bytes"):
        parse_footer(good[:-1])
    with pytest.raises(ValueError):
        padded_size(0)
