"""Disk image formats: what an image file is, and how to hand it to QEMU.

rehost never parses image formats itself; QEMU does (``qemu-img info`` to probe,
``qemu-nbd`` to read). This module only decides *which* format a file is, refuses files
that are not disk images with one clear line, and builds the QEMU block options that open
an image, including an image stored inside a container file (a VMDK inside an OVA).

Formats are always passed to QEMU explicitly, never left to QEMU's probing when reading:
a raw disk written by a guest can start with bytes that look like a qcow2 header (with a
backing file such as ``/etc/shadow``), and probing it would read the wrong thing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rehost.disks import vhdx_chain
from rehost.errors import UsageError

#: Formats rehost reads and writes, by QEMU driver name (``vpc`` is VHD).
FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")

#: What a file name promises. ``.img`` and ``.raw`` are raw.
EXTENSIONS = {
    ".qcow2": "qcow2",
    ".qcow": "qcow2",
    ".vmdk": "vmdk",
    ".vhd": "vpc",
    ".vpc": "vpc",
    ".vhdx": "vhdx",
    ".img": "raw",
    ".raw": "raw",
}

#: Human names for messages.
FORMAT_NAMES = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "VMDK",
    "vpc": "VHD",
    "vhdx": "VHDX",
    "avhdx": "differencing VHDX",
}

#: Formats QEMU cannot read that rehost serves itself: a differencing VHDX (a Hyper-V
#: checkpoint) and its parents, through libvhdi (``rehost.disks.vhdx_chain``).
CHAIN_FORMATS = ("avhdx",)

SECTOR = 512
_QEMU_IMG_TIMEOUT = 60.0
_VHD_COOKIE = b"conectix"


@dataclass(frozen=True)
class DiskImage:
    """A disk image QEMU can open.

    ``offset``/``length`` say where the image lives inside ``path`` when ``path`` is a
    container (an OVA tar member); for a plain image file they are 0 and None.
    """

    path: Path
    format: str  # raw | qcow2 | vmdk | vpc | vhdx | avhdx (a differencing VHDX chain)
    virtual_size: int
    offset: int = 0
    length: int | None = None

    @property
    def in_container(self) -> bool:
        return self.offset != 0 or self.length is not None

    def describe(self) -> str:
        """A short name for messages: the file, and the member range if any."""
        if not self.in_container:
            return str(self.path)
        return f"{self.path} (bytes {self.offset}+{self.length})"


def probe(
    path: Path,
    fmt: str | None = None,
    *,
    offset: int = 0,
    length: int | None = None,
    dirty_log: bool = False,
) -> DiskImage:
    """Find out what disk image ``path`` is, or raise UsageError saying why it is none.

    ``fmt`` forces a format (QEMU then only checks it). ``offset``/``length`` probe an
    image stored inside a container file. For qcow2 images with a backing file the
    overlay's virtual size is used; the chain is opened by QEMU when reading.

    A differencing VHDX (``.avhdx``, or any VHDX whose header says HasParent) is validated
    with its whole chain and comes back as format ``avhdx``. A VHDX whose log was not replayed
    is a ``DirtyLogError``, unless ``dirty_log`` allows it (its log is then replayed on a copy
    before reading: ``replay_on_copy``).
    """
    path = Path(path)
    size = _check_file(path)
    if fmt is not None and fmt not in FORMATS + CHAIN_FORMATS:
        raise UsageError(f"{path}: unknown disk format {fmt!r} (use one of {', '.join(FORMATS)})")
    if offset < 0 or (length is not None and (length < 0 or offset + length > size)):
        raise UsageError(f"{path}: the disk at bytes {offset}+{length} lies outside the file")
    data_size = size - offset if length is None else length
    if data_size == 0:
        raise UsageError(f"{_where(path, offset, length)}: is empty, not a disk image")

    image = DiskImage(path, fmt or "raw", 0, offset, length)
    vhdx = _vhdx_header(path) if not image.in_container and fmt in (None, "vhdx", "avhdx") else None
    if vhdx is not None and (vhdx.has_parent or fmt == "avhdx"):
        layers = vhdx_chain.read_chain(path)  # every parent there, and the right one
        return DiskImage(path, "avhdx", layers[0].virtual_size)
    try:
        info = _qemu_img_info(image, forced=fmt is not None)
    except UsageError as e:
        if vhdx is None or not (vhdx.dirty or "log that needs to be replayed" in str(e)):
            raise
        if dirty_log:
            return DiskImage(path, "vhdx", vhdx.virtual_size)
        raise vhdx_chain.DirtyLogError(path) from None
    detected = str(info.get("format", ""))
    expected = EXTENSIONS.get(path.suffix.lower()) if not image.in_container else None

    if fmt is None and detected == "raw" and _has_vhd_footer(path, offset, data_size):
        # qemu probes a fixed VHD (raw data + a 512-byte footer) as raw.
        if expected == "raw":
            raise UsageError(
                f"{path}: the name says raw but the file ends with a VHD footer; "
                "pass the format (vpc or raw) explicitly"
            )
        detected = "vpc"
        info = _qemu_img_info(DiskImage(path, "vpc", 0, offset, length), forced=True)

    if detected not in FORMATS:
        raise UsageError(
            f"{_where(path, offset, length)}: is a {detected or 'unknown'} image; rehost "
            f"reads {', '.join(FORMAT_NAMES[f] for f in FORMATS)}"
        )
    if fmt is None and expected is not None and expected != detected:
        raise UsageError(
            f"{path}: the name says {FORMAT_NAMES[expected]} but the content is "
            f"{FORMAT_NAMES[detected]}; rename it or pass the format explicitly"
        )
    if detected == "raw" and data_size % SECTOR != 0:
        raise UsageError(
            f"{_where(path, offset, length)}: not a disk image (its size, {data_size} bytes, "
            f"is not a multiple of {SECTOR})"
        )
    _check_references(path, image.in_container, info)

    virtual_size = int(info.get("virtual-size", 0))
    if virtual_size <= 0:
        raise UsageError(f"{_where(path, offset, length)}: the image has no size")
    return DiskImage(path, detected, virtual_size, offset, length)


def blockdev_options(image: DiskImage) -> dict[str, Any]:
    """QEMU block options (as for ``--blockdev``/``json:``) that open ``image``.

    The file is named through the ``file`` driver, so no part of its name is parsed as a
    protocol prefix (``nbd:``, ``json:``) and the format is always explicit. An image
    inside a container sits on a ``raw`` driver with ``offset`` and ``size``.
    """
    node: dict[str, Any] = {"driver": "file", "filename": str(Path(image.path).absolute())}
    if image.in_container:
        node = {"driver": "raw", "offset": image.offset, "file": node}
        if image.length is not None:
            node["size"] = image.length
    if image.format in CHAIN_FORMATS:
        raise UsageError(f"{image.path}: a {FORMAT_NAMES[image.format]} is read by rehost, not QEMU")
    if image.format == "raw" and not image.in_container:
        return {"driver": "raw", "file": node}
    if image.format == "raw":
        return node
    return {"driver": image.format, "file": node}


def qemu_image_opts(image: DiskImage) -> str:
    """A ``json:{...}`` filename that qemu-img and qemu-nbd open without probing."""
    return "json:" + json.dumps(blockdev_options(image), separators=(",", ":"))


def _where(path: Path, offset: int, length: int | None) -> str:
    return str(path) if offset == 0 and length is None else f"{path} (bytes {offset}+{length})"


def _vhdx_header(path: Path) -> vhdx_chain.VhdxFile | None:
    """A VHDX's own description of itself (None for other files, or one QEMU may judge)."""
    if not vhdx_chain.is_vhdx(path):
        return None
    try:
        return vhdx_chain.read_vhdx(path)
    except UsageError:
        if path.suffix.lower() == ".avhdx":
            raise
        return None


def replay_on_copy(image: DiskImage, dest: Path) -> DiskImage:
    """Copy ``image`` (a VHDX whose log was not replayed) to ``dest``, replay the log there
    with ``qemu-img check -r all``, and return the copy. The user's file is only read."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + f".{os.getpid()}.part")
        try:
            shutil.copyfile(image.path, part)
            proc = subprocess.run(["qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(part)],
                                  capture_output=True, text=True, timeout=_QEMU_IMG_TIMEOUT * 10,
                                  check=False)
            if proc.returncode not in (0, 3):  # 3: leaked clusters, harmless
                raise UsageError(f"{image.path}: replaying its log on a copy failed "
                                 f"({_qemu_reason(proc.stderr, str(part))})")
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
    return probe(dest, "vhdx")


def _check_file(path: Path) -> int:
    """Refuse what cannot be an image file; return its size in bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory, not a disk image")
    if stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{path}: is a block device; rehost reads image files here")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    os.close(fd)
    if st.st_size == 0:
        raise UsageError(f"{path}: is empty, not a disk image")
    return st.st_size


def _qemu_img_info(image: DiskImage, *, forced: bool) -> dict[str, Any]:
    """Run ``qemu-img info``; a failure means the file is not that kind of image.

    Unforced, QEMU probes the format: only to identify the file, because reading always
    names the format. An absolute path is never taken for a protocol prefix.
    """
    if forced:
        target = qemu_image_opts(image)
    elif image.in_container:
        # No top-level driver: QEMU probes the format of the member range.
        member = blockdev_options(DiskImage(image.path, "raw", 0, image.offset, image.length))
        target = "json:" + json.dumps({"file": member}, separators=(",", ":"))
    else:
        target = str(Path(image.path).absolute())
    # --backing-chain opens the whole chain, so a missing backing file fails here.
    cmd = ["qemu-img", "info", "--output=json", "--backing-chain", "-U", target]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_QEMU_IMG_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise UsageError("qemu-img is not installed (run ./scripts/install)") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"{image.describe()}: qemu-img info did not answer in time") from None
    if proc.returncode != 0:
        reason = _qemu_reason(proc.stderr, target)
        if "Could not open '" in reason:
            raise UsageError(f"{image.describe()}: cannot open a file it refers to ({reason})")
        what = f"a {FORMAT_NAMES.get(image.format, image.format)}" if forced else "a disk"
        raise UsageError(f"{image.describe()}: not {what} image ({reason})")
    try:
        chain = json.loads(proc.stdout)
    except ValueError:
        chain = None
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], dict):
        raise UsageError(f"{image.describe()}: qemu-img info gave no answer")
    return dict(chain[0])


def _qemu_reason(stderr: str, target: str) -> str:
    """The useful part of a qemu error: without our own (json:) file name, no repeats."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "qemu-img failed"
    line = lines[-1].removeprefix("qemu-img: ")
    line = line.replace(f"Could not open '{target}': ", "").replace(f"{target}: ", "")
    parts: list[str] = []
    for part in line.split(": "):
        if not parts or parts[-1] != part:
            parts.append(part)
    return ": ".join(parts).strip()


def _has_vhd_footer(path: Path, offset: int, size: int) -> bool:
    """True when the last sector holds a VHD footer (a fixed VHD, which QEMU calls raw)."""
    if size < 2 * SECTOR or size % SECTOR != 0:
        return False
    with open(path, "rb") as f:
        f.seek(offset + size - SECTOR)
        return f.read(len(_VHD_COOKIE)) == _VHD_COOKIE


def _check_references(path: Path, in_container: bool, info: dict[str, Any]) -> None:
    """Refuse images that make QEMU open other files we did not choose.

    A qcow2 backing file next to a plain image is a normal chain. An image inside a
    container is untrusted input: it may not point anywhere. A VMDK descriptor may only
    name extent files in its own directory.
    """
    backing = info.get("backing-filename")
    if backing and in_container:
        raise UsageError(f"{path}: the disk inside refers to a backing file {backing!r}")
    specific = info.get("format-specific") or {}
    if specific.get("type") != "vmdk":
        return
    extents = (specific.get("data") or {}).get("extents") or []
    folder = path.absolute().parent
    for extent in extents:
        name = str(extent.get("filename", ""))
        if in_container:
            # The member itself shows up as a json: filename; anything else is a file
            # the descriptor names.
            if not name.startswith("json:") or len(extents) != 1:
                raise UsageError(f"{path}: the VMDK inside refers to another file {name!r}")
            continue
        target = Path(name) if Path(name).is_absolute() else folder / name
        if ".." in PurePosixPath(name).parts or target.absolute().parent != folder:
            raise UsageError(f"{path}: the VMDK refers to {name!r} outside its folder")
