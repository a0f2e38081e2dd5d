"""The agent's state folder: configuration, credentials, digests.

```
<state>/config.json        machine, server serial, listen address, ports, disks
<state>/tls/ca-cert.pem    the vault's CA
<state>/tls/server-cert.pem, server-key.pem   this agent's certificate (HTTPS and NBD)
<state>/digests/           committed digests per disk
<state>/revoked.json       serials refused even if the CA signed them (optional)
```
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rehost.fs import write_private

DEFAULT_STATE = Path("/var/lib/rehost-agent")
DEFAULT_PORT = 8743
DEFAULT_NBD_PORT = 10809


@dataclass
class AgentConfig:
    machine: str
    server_serial: int
    disks: list[str]
    listen: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    #: disk N is exported on nbd_port + N
    nbd_port: int = DEFAULT_NBD_PORT
    shutdown_command: list[str] = field(default_factory=lambda: ["shutdown", "-h", "now"])
    #: seconds after which a freeze is undone even if nobody asks
    freeze_limit: float = 60.0
    #: the same for a failover: frozen from the shutdown request until the final sync ends
    hold_limit: float = 900.0

    @staticmethod
    def path(state: Path) -> Path:
        return state / "config.json"

    @classmethod
    def load(cls, state: Path) -> AgentConfig:
        data = json.loads(cls.path(state).read_text())
        data["server_serial"] = int(data["server_serial"])
        return cls(**data)

    def save(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = asdict(self)
        data["server_serial"] = str(self.server_serial)
        write_private(self.path(state), json.dumps(data, indent=1).encode())


def tls_dir(state: Path) -> Path:
    return state / "tls"


def revoked(state: Path) -> set[int]:
    try:
        return {int(s) for s in json.loads((state / "revoked.json").read_text())}
    except (OSError, ValueError):
        return set()


def uninstall(state: Path) -> list[str]:
    """Remove the agent's credentials, configuration and digests; what was removed."""
    removed = []
    for p in (tls_dir(state), state / "digests"):
        if p.exists():
            shutil.rmtree(p)
            removed.append(str(p))
    for p in (AgentConfig.path(state), state / "revoked.json"):
        if p.exists():
            p.unlink()
            removed.append(str(p))
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
        removed.append(str(state))
    return removed
