"""Everything that reads or writes a disk: extents, image formats, qemu-nbd and NBD.

Every disk is read as an NBD export: an image file through ``qemu-nbd`` (``open_disk``),
anything else through an NBD server that already runs (``open_nbd``: QEMU's own server,
the agent). Readers ask for extents first and never read holes or zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rehost.disks import vhdx_chain
from rehost.disks.extent import Extent
from rehost.disks.formats import CHAIN_FORMATS, DiskImage, probe, qemu_image_opts
from rehost.disks.nbd_disk import BASE_ALLOCATION, NbdDisk
from rehost.disks.nbd_server import QemuNbdServer
from rehost.errors import UsageError

__all__ = [
    "BASE_ALLOCATION",
    "DiskImage",
    "Extent",
    "NbdDisk",
    "QemuNbdServer",
    "open_disk",
    "open_nbd",
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
