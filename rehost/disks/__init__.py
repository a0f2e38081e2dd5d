"""Everything that reads or writes a disk: extents, image formats, qemu-nbd and NBD.

Every disk is read as an NBD export: an image file through ``qemu-nbd`` (``open_disk``),
anything else through an NBD server that already runs (``open_nbd``: QEMU's own server,
the agent). One exception, for speed: a cycle reads a plain raw image file in place
(``open_reader``, ``FileDisk``), since there is no format to parse. Readers ask for extents
first and never read holes or zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rehost.disks import vhdx_chain
from rehost.disks.extent import Extent
from rehost.disks.file_disk import FileDisk
from rehost.disks.formats import CHAIN_FORMATS, DiskImage, probe, qemu_image_opts
from rehost.disks.nbd_disk import BASE_ALLOCATION, NbdDisk
from rehost.disks.nbd_server import QemuNbdServer
from rehost.errors import UsageError

__all__ = [
    "BASE_ALLOCATION",
    "VIA_NBD_ENV",
    "DiskImage",
    "Extent",
    "FileDisk",
    "NbdDisk",
    "QemuNbdServer",
    "open_disk",
    "open_nbd",
    "open_reader",
    "probe",
    "qemu_image_opts",
]


@contextmanager
def open_disk(image: DiskImage, *, writable: bool = False) -> Iterator[NbdDisk]:
    """Serve ``image`` with qemu-nbd and yield one connection to it; stop both after.

    For several parallel connections use ``QemuNbdServer`` and ``open_nbd`` on its
    ``socket_path`` instead. A differencing VHDX chain (format ``avhdx``), which QEMU cannot
    read, is served by rehost's own NBD server instead (``vhdx_chain.serve_chain``).
    """
    if image.format in CHAIN_FORMATS:
        if writable or image.in_container:
            raise UsageError(f"{image.path}: a differencing VHDX is only read, as a file of its own")
        with vhdx_chain.serve_chain(image.path) as chain:
            yield chain
        return
    with QemuNbdServer(image, writable=writable) as server:
        disk = NbdDisk.connect(server.socket_path)
        disk.name = image.describe()
        try:
            yield disk
            if writable:
                disk.flush()
        finally:
            disk.close()


#: set to 1 to read raw image files through qemu-nbd too (benchmarks compare both ways)
VIA_NBD_ENV = "REHOST_READ_RAW_VIA_NBD"


@contextmanager
def open_reader(image: DiskImage) -> Iterator[NbdDisk | FileDisk]:
    """A disk a cycle reads: a plain raw file in place (no qemu-nbd process, no socket),
    any other image as ``open_disk`` serves it."""
    if image.format == "raw" and not image.in_container and os.environ.get(VIA_NBD_ENV) != "1":
        with FileDisk(image.path, image.virtual_size) as disk:
            yield disk
        return
    with open_disk(image) as disk:
        yield disk


def open_nbd(
    uri_or_socket: str | os.PathLike[str],
    export_name: str = "",
    meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
) -> NbdDisk:
    """Connect to a running NBD server (a URI or a unix socket path).

    ``meta_contexts`` are negotiated at connect time, e.g. ``qemu:dirty-bitmap:NAME``
    next to ``base:allocation``; read them with ``NbdDisk.block_status``. The result is a
    context manager that disconnects.
    """
    return NbdDisk.connect(uri_or_socket, export_name, meta_contexts)
