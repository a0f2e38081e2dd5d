"""vcsim, govmomi's vCenter simulator, as a real test service (built from Debian's Go sources).

Why vcsim: it speaks the real vSphere SOAP API (sessions, the property collector, tasks,
snapshots, reconfiguration, power operations) and serves datastore files over ``/folder``
with HTTP ranges, so rehost's vSphere source is tested against the same wire protocol as a
vCenter, through pyvmomi. Debian ships govmomi 0.24.2's ``simulator`` package as Go source
(``golang-github-vmware-govmomi-dev``) but no ``vcsim`` command: ``main.go`` here is one,
built once with ``GO111MODULE=off GOPATH=/usr/share/gocode go build`` (~25 s) into
``/opt/rehost-test/vcsim`` (``$REHOST_VCSIM_DIR`` overrides it), keyed by ``main.go``'s hash.

What 0.24.2 does not do (filled by the test double in :mod:`rehost.testkit.vcsim.cbt_shim`,
or worked around by the source): no ``QueryChangedDiskAreas``, ``changeId`` never set;
reading an unset property (``vm.snapshot`` with none) breaks the connection; waiting on
``RemoveSnapshot_Task`` with pyvmomi's task helper raises (the task's entity is gone).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rehost.errors import RehostError
from rehost.testkit.service import ServerProcess

MAIN_GO = Path(__file__).with_name("main.go")
DEFAULT_DIR = Path("/opt/rehost-test/vcsim")
GOPATH = Path("/usr/share/gocode")
SIMULATOR = GOPATH / "src/github.com/vmware/govmomi/simulator"


class VcsimError(RehostError):
    """vcsim could not be built or did not start."""

    user_error = False


def missing_reason() -> str | None:
    """None if vcsim can be built here, else what is missing (for a test skip)."""
    if shutil.which("go") is None:
        return "go is not installed (run scripts/install: golang-go)"
    if not SIMULATOR.is_dir():
        return ("govmomi's simulator sources are missing "
                "(run scripts/install: golang-github-vmware-govmomi-dev)")
    return None


def build(folder: Path | None = None) -> Path:
    """The vcsim binary for the current ``main.go``, built once (a build is ~25 s)."""
    reason = missing_reason()
    if reason:
        raise VcsimError(reason)
    folder = folder or Path(os.environ.get("REHOST_VCSIM_DIR") or DEFAULT_DIR)
    digest = hashlib.sha256(MAIN_GO.read_bytes()).hexdigest()[:12]
    binary = folder / f"vcsim-{digest}"
    if binary.exists():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / "main.go"
        shutil.copyfile(MAIN_GO, src)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH),
               "GOCACHE": str(folder / "gocache"), "GOFLAGS": ""}
        p = subprocess.run(["go", "build", "-o", str(Path(tmp) / "vcsim"), "main.go"], cwd=tmp,
                           env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise VcsimError(f"building vcsim failed: {p.stderr[-2000:]}")
        os.replace(Path(tmp) / "vcsim", binary)  # atomic: a parallel build loses nothing
    return binary


@dataclass(frozen=True)
class Datastore:
    name: str
    #: the simulator's local folder behind the datastore (its files are the disks)
    folder: Path


class Vcsim(ServerProcess):
    """One simulated vCenter on a free loopback port; ``with Vcsim() as vc: ...``.

    ``url`` is its SOAP endpoint (``http://127.0.0.1:PORT/sdk``); it accepts any user and
    password. ``datastores`` maps each datastore's name to its local folder.
    """

    log_name = "vcsim.log"  # main.go removes its datastore folders on SIGTERM

    def __init__(self, *, vms: int = 1, start_timeout: float = 30.0) -> None:
        super().__init__(None, prefix="rehost-vcsim-", start_timeout=start_timeout)
        self.vms = vms
        self.url = ""
        self.datastores: dict[str, Datastore] = {}

    @property
    def address(self) -> tuple[str, int]:
        u = urlsplit(self.url)
        return u.hostname or "127.0.0.1", u.port or 80

    def start(self) -> Vcsim:
        binary = build()
        self._spawn([str(binary), "-l", "127.0.0.1:0", "-vm", str(self.vms)], stdout_pipe=True)
        ready = self._ready_line()
        self.url = str(ready["url"])
        self.datastores = {name: Datastore(name, Path(folder))
                           for name, folder in dict(ready["datastores"]).items()}
        return self

    def _ready_line(self) -> dict[str, Any]:
        """main.go prints one JSON line once it listens: wait for it (or the process's end)."""
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self._proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    return dict(json.loads(buf.split(b"\n", 1)[0]))
            elif self._proc.poll() is not None:
                break
        self.stop()
        raise VcsimError(f"vcsim did not print its ready line: {self._log_tail()}")
