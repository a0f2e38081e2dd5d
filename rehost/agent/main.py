"""``rehost-agent``: register | run | inventory | uninstall (stdlib argparse: few dependencies)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from rehost.agent import AGENT_VERSION
from rehost.agent import inventory as inv
from rehost.agent.config import DEFAULT_STATE, AgentConfig, uninstall
from rehost.agent.register import RegistrationError, register


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rehost-agent", description="rehost replication agent")
    p.add_argument("--version", action="version", version=AGENT_VERSION)
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (%(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="enroll with the replication server (one-time passphrase)")
    r.add_argument("--server", required=True, help="enrollment URL, https://HOST:PORT")
    r.add_argument("--passphrase", required=True)
    r.add_argument("--fingerprint", required=True, help="server certificate SHA-256 (printed with it)")
    r.add_argument("--disk", action="append", required=True, help="block device or file; repeat")
    r.add_argument("--listen", default="0.0.0.0")
    r.add_argument("--port", type=int)
    r.add_argument("--nbd-port", type=int)
    r.add_argument(
        "--shutdown-command",
        help="what powers the machine off at failover (default: shutdown -h now)",
    )
    sub.add_parser("run", help="serve the replication server (HTTPS API and NBD exports)")
    sub.add_parser("inventory", help="print what the agent reports")
    sub.add_parser("uninstall", help="remove the agent's credentials, configuration and digests")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state: Path = args.state
    if args.command == "register":
        try:
            config = register(
                state,
                args.server,
                args.passphrase,
                args.fingerprint,
                args.disk,
                listen=args.listen,
                port=args.port,
                nbd_port=args.nbd_port,
                shutdown_command=shlex.split(args.shutdown_command) if args.shutdown_command else None,
            )
        except RegistrationError as e:
            print(f"rehost-agent: {e}", file=sys.stderr)
            return 1
        print(f"registered as {config.machine}; start the agent with: rehost-agent --state {state} run")
        return 0
    if args.command == "inventory":
        disks = AgentConfig.load(state).disks if AgentConfig.path(state).is_file() else []
        print(json.dumps(inv.collect([Path(d) for d in disks]), indent=1))
        return 0
    if args.command == "uninstall":
        for p in uninstall(state):
            print(f"removed {p}")
        return 0
    from rehost.agent.service import AgentService

    if not AgentConfig.path(state).is_file():
        print(f"rehost-agent: not registered (no {AgentConfig.path(state)})", file=sys.stderr)
        return 1
    service = AgentService(state)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("rehost.agent").info("serving %s on port %d", service.config.machine, service.port)
    with contextlib.suppress(KeyboardInterrupt):
        service.serve_forever()
    return 0


def run() -> None:
    """Console entry point ``rehost-agent``."""
    sys.exit(main())
