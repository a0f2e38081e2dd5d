"""Page-aligned buffers kept per thread, for objects written with ``O_DIRECT``: a pack is laid
out in one (``pack.PackWriter.finish``), any other large object is copied into one
(``storage.local``). Kept for the thread's next object: mapping and faulting in fresh pages
cost more than the copy."""

from __future__ import annotations

import mmap
import threading

#: O_DIRECT alignment of a buffer and of a write's length (covers 512 and 4096 byte sectors)
ALIGN = 4096


def aligned_length(n: int) -> int:
    """``n`` rounded up to the next multiple of ``ALIGN``."""
    return -(-n // ALIGN) * ALIGN


def thread_buffer(slot: threading.local, size: int, least: int = 0) -> mmap.mmap:
    """This thread's buffer in ``slot`` (one slot per use, so that two never overlap), at least
    ``aligned_length(size)`` bytes long; a new one is mapped ``least`` bytes long or longer."""
    need = aligned_length(size)
    buf: mmap.mmap | None = getattr(slot, "buf", None)
    if buf is None or len(buf) < need:
        buf = slot.buf = mmap.mmap(-1, max(need, least))  # anonymous: page-aligned
    return buf
