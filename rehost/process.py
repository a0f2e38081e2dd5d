"""Process helpers shared by jobs, targets and daemons."""

from __future__ import annotations

import os
import socket


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count: it has finished)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def free_port(count: int = 1, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p+count-1 were free a moment ago (a listener that must be
    told its port in advance: an agent's API and its NBD exports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base + 1, base + count):
            with socket.socket() as t:
                try:
                    t.bind((host, p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise OSError("no free ports")
