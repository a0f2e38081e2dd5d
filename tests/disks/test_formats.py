"""probe(): what a file is, and one clear line when it is not a disk image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rehost.disks import DiskImage, probe, qemu_image_opts
from rehost.errors import UsageError

from .images import MASTER_SIZE, VARIANTS, make_variant, run


@pytest.mark.parametrize(
    ("variant", "fmt"), [(v, f) for v, (f, _) in VARIANTS.items() if v != "qcow2-backing"]
)
def test_probe_finds_format_and_size(variant: str, fmt: str, master: Path, tmp_path: Path) -> None:
    image = make_variant(master, variant, tmp_path)
    assert image == DiskImage(image.path, fmt, MASTER_SIZE)


def test_fixed_vhd_is_vpc_not_raw(master: Path, tmp_path: Path) -> None:
    # qemu-img itself calls a fixed VHD "raw" (the footer is at the end); probe does not.
    image = make_variant(master, "vpc-fixed", tmp_path)
    assert image.format == "vpc"
    assert image.virtual_size == MASTER_SIZE
    assert image.path.stat().st_size == MASTER_SIZE + 512
    # Named .raw, the same bytes are ambiguous: say so.
    renamed = tmp_path / "disk.raw"
    image.path.rename(renamed)
    with pytest.raises(UsageError, match="VHD footer"):
        probe(renamed)
    assert probe(renamed, "vpc").virtual_size == MASTER_SIZE


def test_backing_chain_uses_overlay_size(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "qcow2-backing", tmp_path)
    assert (image.format, image.virtual_size) == ("qcow2", MASTER_SIZE)


def test_forced_format_must_match(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "qcow2", tmp_path)
    assert probe(image.path, "qcow2") == image
    with pytest.raises(UsageError, match=r"qcow2\.qcow2: not a VMDK image"):
        probe(image.path, "vmdk")
    with pytest.raises(UsageError, match="unknown disk format 'iso'"):
        probe(image.path, "iso")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.qcow2: no such file$"):
        probe(tmp_path / "nope.qcow2")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory, not a disk image"):
        probe(tmp_path)


def test_text_file_is_not_a_disk(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a disk\n")
    with pytest.raises(UsageError) as err:
        probe(text)
    assert str(err.value) == (
        f"{text}: not a disk image (its size, 26 bytes, is not a multiple of 512)"
    )


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(UsageError, match="is empty, not a disk image"):
        probe(empty)


def test_unreadable_file(master: Path, tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rehost-test-"))  # outside root's 0700 tmp
    try:
        folder.chmod(0o755)
        locked = folder / "locked.raw"
        shutil.copy(master, locked)
        locked.chmod(0)
        if os.geteuid() != 0:
            with pytest.raises(UsageError, match="cannot be read"):
                probe(locked)
            return
        # root reads every file: probe as nobody instead.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        code = (
            "from pathlib import Path; from rehost.disks import probe\n"
            f"try: probe(Path({str(locked)!r}))\n"
            "except Exception as e: print(type(e).__name__, e)"
        )
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", code],
            capture_output=True, text=True, check=False, cwd=Path(__file__).parents[2],
        )
        assert proc.stdout.strip() == f"UsageError {locked}: cannot be read (Permission denied)"
    finally:
        shutil.rmtree(folder)


def test_extension_must_match_content(master: Path, tmp_path: Path) -> None:
    image = make_variant(master, "qcow2", tmp_path)
    lying = tmp_path / "disk.vmdk"
    image.path.rename(lying)
    with pytest.raises(UsageError) as err:
        probe(lying)
    assert str(err.value) == (
        f"{lying}: the name says VMDK but the content is qcow2; "
        "rename it or pass the format explicitly"
    )
    assert probe(lying, "qcow2").format == "qcow2"

    raw_named_qcow2 = tmp_path / "raw.qcow2"
    shutil.copy(master, raw_named_qcow2)
    with pytest.raises(UsageError, match="the name says qcow2 but the content is raw"):
        probe(raw_named_qcow2)


def test_unsupported_format(master: Path, tmp_path: Path) -> None:
    vdi = tmp_path / "disk.vdi"
    run("qemu-img", "convert", "-q", "-O", "vdi", master, vdi)
    with pytest.raises(UsageError, match="is a vdi image; rehost reads raw, qcow2, VMDK"):
        probe(vdi)


def test_qemu_image_opts() -> None:
    plain = DiskImage(Path("/d/a:b.qcow2"), "qcow2", 1 << 30)
    assert json.loads(qemu_image_opts(plain).removeprefix("json:")) == {
        "driver": "qcow2",
        "file": {"driver": "file", "filename": "/d/a:b.qcow2"},
    }
    raw = DiskImage(Path("/d/x.img"), "raw", 1 << 30)
    assert json.loads(qemu_image_opts(raw)[5:]) == {
        "driver": "raw",
        "file": {"driver": "file", "filename": "/d/x.img"},
    }
    member = DiskImage(Path("/d/x.ova"), "vmdk", 1 << 30, offset=1536, length=4096)
    assert json.loads(qemu_image_opts(member)[5:]) == {
        "driver": "vmdk",
        "file": {
            "driver": "raw",
            "offset": 1536,
            "size": 4096,
            "file": {"driver": "file", "filename": "/d/x.ova"},
        },
    }


def test_missing_backing_file(tmp_path: Path) -> None:
    overlay = tmp_path / "top.qcow2"
    run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2",
        overlay, "64M")
    with pytest.raises(UsageError) as err:
        probe(overlay)
    assert str(err.value) == (
        f"{overlay}: cannot open a file it refers to "
        f"(Could not open '{tmp_path}/gone.qcow2': No such file or directory)"
    )


def test_vmdk_descriptor_may_not_leave_its_folder(master: Path, tmp_path: Path) -> None:
    run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
        tmp_path / "d.vmdk", "1M")
    assert probe(tmp_path / "d.vmdk").format == "vmdk"  # d-flat.vmdk next to it: fine
    evil = tmp_path / "evil.vmdk"
    evil.write_text((tmp_path / "d.vmdk").read_text().replace('"d-flat.vmdk"', f'"{master}"'))
    with pytest.raises(UsageError, match=f"refers to '{master}' outside its folder"):
        probe(evil)
