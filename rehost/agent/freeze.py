"""Freezing the file systems on the agent's disks (``fsfreeze``), always thawed again:
by ``thaw``, by a watchdog after a time limit, and when the agent stops."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path


def mounts_of(disks: list[Path], mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points of file systems on the disks (the block devices or their partitions)."""
    devs: set[str] = set()
    for d in disks:
        try:
            st = os.stat(d)
        except OSError:
            continue
        if not d.is_block_device():
            continue
        devs.add(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        name = Path(os.path.realpath(d)).name
        sys_dir = Path("/sys/class/block") / name
        for part in sys_dir.glob(f"{name}*/dev") if sys_dir.is_dir() else []:
            devs.add(part.read_text().strip())
    out = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] in devs and fields[4] not in out:
            out.append(fields[4].replace("\\040", " "))
    return out


class Freezer:
    def __init__(self, limit: float = 60.0) -> None:
        self.limit = limit
        self._frozen: list[str] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.last_watchdog_thaw: bool = False

    @property
    def frozen(self) -> list[str]:
        return list(self._frozen)

    def freeze(self, mounts: list[str], limit: float | None = None, cap: float | None = None) -> list[str]:
        """Freeze every mount point, or none: on a failure the ones done are thawed. The
        watchdog thaws after ``limit`` seconds, at most ``cap`` (default: the freezer's)."""
        with self._lock:
            self._thaw_locked()
            done: list[str] = []
            for m in mounts:
                r = subprocess.run(["fsfreeze", "-f", m], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    self._frozen = done
                    self._thaw_locked()
                    raise OSError(f"fsfreeze -f {m}: {r.stderr.strip() or r.returncode}")
                done.append(m)
            self._frozen = done
            self.last_watchdog_thaw = False
            cap = cap or self.limit
            self._timer = threading.Timer(min(limit or cap, cap), self._watchdog)
            self._timer.daemon = True
            self._timer.start()
            return done

    def _watchdog(self) -> None:
        with self._lock:
            if self._frozen:
                self.last_watchdog_thaw = True
            self._thaw_locked()

    def thaw(self) -> list[str]:
        with self._lock:
            return self._thaw_locked()

    def _thaw_locked(self) -> list[str]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        thawed, self._frozen = self._frozen, []
        for m in reversed(thawed):
            # Already thawed (EINVAL) is fine; keep going with the others whatever happens.
            subprocess.run(["fsfreeze", "-u", m], capture_output=True, timeout=60)
        return thawed
