"""File-system helpers with no dependencies (the agent imports them too)."""

from __future__ import annotations

import os
from pathlib import Path


def direct_io_works(path: Path) -> bool:
    """True when the file system under ``path`` accepts O_DIRECT (tmpfs does not)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:
        return False
    os.close(fd)
    return True
