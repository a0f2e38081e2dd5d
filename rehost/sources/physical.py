"""Source ``physical``: a physical (or any unmanaged) machine running ``rehost-agent``.

One cycle: (optionally) freeze the file systems, ask the agent which 4 KiB blocks changed
since the parent point, read only those over NBD+TLS from the agent's exports, and once the
point is stored send the agent the digests of what was stored, so it compares with exactly
that next time. Consistency is recorded, never guessed: a live disk gives a
"not-crash-consistent" point; with every file system on the disks frozen, app-consistent.
(LVM / device-mapper snapshots are not used: this agent has no such capability yet.)
"""

from __future__ import annotations

import base64
import contextlib
import socket
import zlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import nbd

from rehost.agent.client import AgentClient, AgentError
from rehost.agent.pki import PASSPHRASE_TTL, CertificateAuthority
from rehost.agent.tracker import apply_digests, block_count, pack_digests, zero_digests
from rehost.disks.extent import Extent
from rehost.disks.nbd_disk import BASE_ALLOCATION, NbdDisk
from rehost.errors import DiskError, UsageError
from rehost.replication.digests import DigestCache
from rehost.replication.reading import ReadableDisk
from rehost.replication.resume import ResumeJournal
from rehost.replication.retention import parse_duration
from rehost.repository.manifest import Consistency, RecoveryPoint
from rehost.sources import registry
from rehost.sources.base import Snapshot
from rehost.spec import DiskSpec, MachineSpec, NicSpec

#: a dead link fails a read after this many seconds instead of hanging
LINK_TIMEOUT = 20


def open_tls_nbd(
    host: str, port: int, export: str, cert_dir: str, link_timeout: int = LINK_TIMEOUT
) -> NbdDisk:
    """Connect to an agent's export with NBD over TLS (client certificate in ``cert_dir``).

    libnbd checks the agent's certificate against the CA and the address against its SANs.
    """
    h = nbd.NBD()
    h.set_handle_name("rehost-agent")
    h.set_pread_initialize(False)
    h.add_meta_context(BASE_ALLOCATION)
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(cert_dir)
    target = f"[{host}]" if ":" in host else host
    try:
        h.connect_uri(f"nbds://{target}:{port}/{export}")
    except nbd.Error as e:
        raise DiskError(f"cannot open {export} on the agent at {host}:{port}: {e}") from None
    _tune_socket(h.aio_get_fd(), link_timeout)
    return NbdDisk(h, name=f"agent {host}:{port}/{export}")


def _tune_socket(fd: int, seconds: int) -> None:
    """Keepalive and TCP_USER_TIMEOUT: a cut link errors out in ``seconds``, never hangs."""
    s = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, seconds // 4))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, seconds // 8))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)
    finally:
        s.detach()  # the fd belongs to libnbd


class PhysicalSource:
    """Reads a machine through its enrolled agent.

    ``cache`` is the vault's DigestCache (the cycle saves the new point's digests there
    before ``on_commit``); ``endpoint`` overrides the address enrollment recorded.
    """

    kind = "physical"

    def __init__(
        self,
        ca: CertificateAuthority,
        cache: DigestCache,
        *,
        agent_name: str | None = None,
        host: str | None = None,
        port: int | None = None,
        freeze_timeout: float = 600.0,
        timeout: float = 600.0,
        link_timeout: int = LINK_TIMEOUT,
    ) -> None:
        self.ca = ca
        self.cache = cache
        self.agent_name = agent_name
        self.host = host
        self.port = port
        self.freeze_timeout = freeze_timeout
        self.timeout = timeout
        self.link_timeout = link_timeout

    @classmethod
    def from_settings(
        cls, settings: dict[str, Any], ca: CertificateAuthority, cache: DigestCache
    ) -> PhysicalSource:
        return cls(
            ca, cache, agent_name=settings.get("agent"), host=settings.get("host"), port=settings.get("port")
        )

    def client(self, machine: MachineSpec | str) -> AgentClient:
        """A client of the machine's enrolled agent (``UsageError`` if it has none yet)."""
        name = self.agent_name or (machine if isinstance(machine, str) else machine.name)
        entry = self.ca.machine(name)
        if entry is None:
            raise UsageError(f"{name} has no registered agent (run rehost-agent register on it)")
        host = self.host or str(entry.get("address") or "")
        agent = (entry.get("inventory") or {}).get("agent") or {}
        port = self.port or int(agent.get("port") or 8743)
        if not host:
            raise UsageError(f"the address of {name}'s agent is unknown")
        return AgentClient(self.ca, name, host, port, timeout=self.timeout)

    @contextmanager
    def snapshot(
        self, machine: MachineSpec, parent: RecoveryPoint | None, *, app_consistent: bool = False
    ) -> Iterator[Snapshot]:
        client = self.client(machine)
        notes: list[str] = []
        frozen = self._freeze(client, app_consistent, notes)
        consistency = Consistency.APP if frozen else Consistency.NONE

        def thaw() -> None:
            nonlocal frozen
            if frozen:
                frozen = False
                try:
                    answer = client.request("POST", "/thaw", timeout=60)
                    if answer.get("watchdog_thawed"):
                        notes.append("the agent's watchdog thawed the file systems before the read ended")
                except AgentError as e:
                    notes.append(f"thaw failed ({e}); the agent's watchdog thaws them")

        holding = False
        try:
            resuming = ResumeJournal.pending(self.cache.root, machine.id, parent.id if parent else None)
            changes = client.request(
                "POST", "/changes", {"point": parent.id if parent else None, "digests": resuming}
            )
            cycle = str(changes["cycle"])
            mounts, held = set(changes.get("mounts") or []), set(changes.get("frozen") or [])
            if not frozen and mounts and mounts <= held:
                consistency = Consistency.APP
                notes[:] = ["file systems held frozen by the agent for the failover"]
                holding = True
            reported: dict[int, tuple[int, list[tuple[int, int]]]] = {}
            with ExitStack() as stack:
                disks: list[tuple[int, ReadableDisk]] = []
                changed: dict[int, list[Extent] | None] = {}
                expected: dict[int, bytes] = {}
                cert_dir = str(self.ca.nbd_client_dir())
                for d in changes["disks"]:
                    index = int(d["index"])
                    disk = stack.enter_context(
                        open_tls_nbd(
                            client.host, int(d["port"]), str(d["export"]), cert_dir, self.link_timeout
                        )
                    )
                    disks.append((index, disk))
                    ext = d.get("extents")
                    changed[index] = None if ext is None else [Extent(int(s), int(n)) for s, n in ext]
                    size = int(d["size"])
                    reported[index] = (
                        size,
                        [(0, size)] if ext is None else [(int(s), int(n)) for s, n in ext],
                    )
                    now = self._expected(machine, parent, index, size, reported[index][1], d.get("digests"))
                    if now is not None:
                        expected[index] = now

                def commit(point: RecoveryPoint) -> None:
                    thaw()
                    self._send_digests(client, machine, cycle, reported, point, notes)

                yield Snapshot(
                    disks,
                    consistency,
                    changed,
                    metadata={
                        "kind": self.kind,
                        "agent": client.machine,
                        "cycle": cycle,
                        "frozen": consistency == Consistency.APP,
                    },
                    notes=notes,
                    on_commit=commit,
                    taken_at=datetime.fromisoformat(str(changes["taken_at"])),
                    expected=expected,
                )
        except BaseException:
            if holding:  # the final sync failed: do not leave the machine frozen till the watchdog
                with contextlib.suppress(AgentError):
                    client.request("POST", "/thaw", timeout=60)
            raise
        finally:
            thaw()

    def _freeze(self, client: AgentClient, app_consistent: bool, notes: list[str]) -> bool:
        """Freeze the file systems on the agent's disks if asked; True if they are frozen.
        Otherwise (not asked, nothing mounted, the agent refused) say why in ``notes``."""
        if not app_consistent:
            inventory = (self.ca.machine(client.machine) or {}).get("inventory") or {}
            why = (inventory.get("capabilities") or {}).get("block_snapshot_why") or "no block snapshots"
            notes.append(f"read from a live disk without a snapshot ({why}): not crash-consistent")
            return False
        try:
            answer = client.request("POST", "/freeze", {"timeout": self.freeze_timeout})
        except AgentError as e:
            notes.append(f"could not freeze the file systems ({e}): not crash-consistent")
            return False
        if not answer.get("frozen"):
            notes.append("no mounted file system on the agent's disks to freeze: not crash-consistent")
            return False
        return True

    def _send_digests(
        self,
        client: AgentClient,
        machine: MachineSpec,
        cycle: str,
        reported: dict[int, tuple[int, list[tuple[int, int]]]],
        point: RecoveryPoint,
        notes: list[str],
    ) -> None:
        """Once the point is stored: send the agent the server's digests of what it stored
        (only the reported runs), so it compares with exactly that next time."""
        try:
            digests = {}
            for index, (size, extents) in reported.items():
                got = self.cache.load(machine.id, index, point.id, block_count(size))
                if got is None:
                    notes.append("the server's digests of the point are missing: the agent "
                                 "will compare with nothing next time (full read)")
                    return
                digests[str(index)] = base64.b64encode(pack_digests(bytes(got), extents)).decode()
            client.request("POST", "/commit", {"cycle": cycle, "point": point.id, "disks": digests})
        except AgentError as e:
            notes.append(f"the agent did not adopt the point ({e}): the next cycle reads all data")

    def _expected(
        self,
        machine: MachineSpec,
        parent: RecoveryPoint | None,
        index: int,
        size: int,
        extents: list[tuple[int, int]],
        packed: str | None,
    ) -> bytes | None:
        """The disk's digests as the agent will send it: the parent's (the server's cache)
        with the changed blocks' replaced by the agent's; None when one of them is missing."""
        if packed is None:
            return None
        if parent is None:
            base: bytes | None = zero_digests(size)
        else:
            got = self.cache.load(machine.id, index, parent.id, block_count(size))
            base = None if got is None else bytes(got)
        if base is None:
            return None
        try:
            return apply_digests(base, extents, base64.b64decode(packed))
        except (ValueError, zlib.error):
            return None  # not what it should be: read everything, trust nothing

    def can_shutdown(self, machine: MachineSpec) -> str | None:
        try:
            self.client(machine)
        except UsageError as e:
            return str(e)
        return None

    def shutdown(self, machine: MachineSpec, timeout: float) -> str:
        """Freeze the machine's file systems and hold them for the final sync; the machine
        powers off in ``release``. (Powering off first would stop the agent, and with it the
        final sync.) An unreachable agent raises: the failover records it and goes on from
        the latest point."""
        answer = self.client(machine).request(
            "POST", "/freeze", {"timeout": max(timeout, self.freeze_timeout), "hold": True}, timeout=60
        )
        frozen = list(answer.get("frozen") or [])
        held = f"{len(frozen)} file system(s) frozen" if frozen else "no mounted file system to freeze"
        return f"{held} on the agent until the final sync; the machine powers off after it"

    def release(self, machine: MachineSpec) -> str | None:
        """After the final sync: the agent thaws and powers the machine off."""
        try:
            self.client(machine).request("POST", "/shutdown", timeout=60)
        except (AgentError, UsageError) as e:
            return f"could not ask the agent to power the machine off: {e}"
        return "the agent is powering the machine off"

    def stop_tracking(self, machine: MachineSpec) -> str | None:
        name = self.agent_name or machine.name
        serial = self.ca.revoke(name)
        return f"revoked the certificate of {name}'s agent" if serial is not None else None


# -- the registry's view: config, discovery (the agent brings it later), enrollment ---------


@dataclass(frozen=True)
class PhysicalConfig:
    """A physical (or any unmanaged) machine that runs rehost-agent; its disks, CPUs, memory
    and NICs come with the agent's registration."""

    expires: str = field(default="1h", metadata={
        "help": "How long the one-time passphrase for the agent's registration is valid "
                "(1m to 7d, e.g. 30m, 2d; default 1h)."})
    host: str | None = field(default=None, metadata={
        "help": "Address to reach the agent at (default: the address it registers from; set it "
                "behind NAT)."})
    port: int | None = field(default=None, metadata={
        "help": "The agent's HTTPS port (default: the one it reports, 8743)."})

    def __post_init__(self) -> None:
        if not 60 <= self.ttl_s <= 7 * 24 * 3600:
            raise UsageError(
                f"a passphrase must be valid between 1 minute and 7 days, not {self.ttl_s:.0f} s")
        if self.port is not None and not 0 < self.port < 65536:
            raise UsageError(f"port {self.port} is not a TCP port")

    @property
    def ttl_s(self) -> float:
        return parse_duration(self.expires).total_seconds()


@dataclass(frozen=True)
class Invitation:
    """What the operator needs on the source machine (the passphrase is shown once)."""

    machine: str
    passphrase: str
    fingerprint: str
    expires_in_s: float

    def command(self, server: str) -> str:
        return (
            f"rehost-agent register --server {server} --passphrase {self.passphrase} "
            f"--fingerprint {self.fingerprint} --disk /dev/sda"
        )


def discover(name: str, config: PhysicalConfig) -> MachineSpec:
    """Nothing to ask yet: the machine is known by name until its agent registers."""
    settings: dict[str, Any] = {"agent": name}
    if config.host:
        settings["host"] = config.host
    if config.port:
        settings["port"] = config.port
    return MachineSpec(name=name, settings=settings)


def invite(machine: str, agent: str, ca: CertificateAuthority, ttl: float = PASSPHRASE_TTL) -> Invitation:
    """A one-time passphrase for the registration of ``machine``'s agent (named ``agent`` in
    its certificate); re-enrolling replaces and revokes the previous certificate."""
    return Invitation(machine, ca.issue_passphrase(agent, ttl), ca.server_fingerprint, ttl)


def _enroll(machine: MachineSpec, config: PhysicalConfig, context: registry.SourceContext) -> Invitation:
    agent = str(machine.settings.get("agent") or machine.name)
    return invite(machine.name, agent, context.authority(), config.ttl_s)


def with_inventory(machine: MachineSpec, inventory: Mapping[str, Any]) -> MachineSpec:
    """The machine as its agent reported it at registration: disks, CPUs, memory, NICs (not
    loopback) and OS. Raises ``UsageError`` when no disk is usable."""
    reported = inventory.get("disks") or []
    bad = [d for d in reported if "size" not in d]
    if not reported or bad:
        why = "; ".join(f"{d.get('path')}: {d.get('error', 'no size')}" for d in bad) or "no disks"
        raise UsageError(f"{machine.name}'s agent reported no usable disk ({why})")
    nics = tuple(
        NicSpec(mac=str(n["mac"]), addresses=tuple(str(a) for a in n.get("addresses") or ()))
        for n in inventory.get("nics") or []
        if n.get("mac") and n.get("name") != "lo" and str(n["mac"]).strip("0:")
    )
    os_name = (inventory.get("os") or {}).get("pretty_name")
    memory = int(inventory.get("memory") or 0) >> 20
    return replace(
        machine,
        disks=tuple(DiskSpec(index=int(d["index"]), size=int(d["size"]), ref=str(d["path"]),
                             format="agent") for d in reported),
        cpus=int(inventory.get("cpus") or 0) or machine.cpus,
        memory_mib=memory or machine.memory_mib,
        nics=nics,
        guest_os=str(os_name) if os_name else machine.guest_os,
    )


def _open(settings: Mapping[str, Any], context: registry.SourceContext) -> PhysicalSource:
    return PhysicalSource.from_settings(dict(settings), context.authority(), context.digests)


PLUGIN = registry.register(registry.SourcePlugin(
    kind="physical",
    summary="A physical (or any unmanaged) Linux machine running rehost-agent: prints a one-time "
            "passphrase; disks and hardware come with the agent's registration.",
    config=PhysicalConfig,
    capabilities=registry.Capabilities(
        change_tracking="agent-digests", can_shutdown=True, app_consistent="fsfreeze",
        has_heartbeat=True, disks_arrive_later=True),
    discover=discover,
    open=_open,
    enroll=_enroll,
    name_hint="the name its agent's certificate will carry",
))
