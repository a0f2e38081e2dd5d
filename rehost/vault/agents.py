"""Physical machines: their agents' enrollment, disks and heartbeats, as the vault sees them.

``source add-physical`` registers a machine with no disks yet and issues a one-time
passphrase; the agent enrolls with it (``rehost serve`` runs the enrollment endpoint) and
reports its disks, which become the machine's disks at the next look (replicate, heartbeat,
``machines``). The CA and everything enrollment wrote live in ``<vault>/agents``.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rehost.errors import UsageError
from rehost.sources import registry
from rehost.vault.inventory import add_source, get_machine, spec_json, spec_of
from rehost.vault.models import DiskRow, MachineRow
from rehost.vault.vault import Vault

# The agent's client, its PKI (cryptography's x509) and the physical source (libnbd) are
# imported where they are used: ``replicate``, ``machines`` and the API of every other kind of
# source pass through here (has_agent, sync_disks) and should not pay for them (issue 17).
if TYPE_CHECKING:
    from rehost.agent.pki import CertificateAuthority, EnrollmentServer
    from rehost.sources.physical import Invitation

#: the stored kind of agent-backed sources (it was "agent" before schema 0004); the physical
#: source plugin's kind (a test holds them equal)
KIND = "physical"
DEFAULT_ENROLL_PORT = 8744
#: how often ``rehost serve`` asks each agent for a heartbeat
HEARTBEAT_EVERY_S = 30.0


def authority(vault: Vault) -> CertificateAuthority:
    """The vault's agents' CA: kept in its database, its TLS files in this folder's ``agents``."""
    from rehost.agent.pki import CertificateAuthority
    from rehost.vault.agent_ca import DatabaseCAStore

    return CertificateAuthority(vault.root / "agents", DatabaseCAStore(vault, vault.root / "agents"))


def enrollment_url(host: str | None = None, port: int = DEFAULT_ENROLL_PORT) -> str:
    host = host or socket.getfqdn()
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def add_physical_source(vault: Vault, name: str, ttl: float | None = None) -> Invitation:
    """Register ``name`` (disks come with its agent) and issue its first passphrase
    (``ttl``: seconds it is valid, the agent PKI's default if None)."""
    ttl = _check_ttl(ttl)
    invitation = add_source(vault, KIND, name, {"expires": f"{int(ttl)}s"}).invitation
    assert invitation is not None  # the physical plugin always enrolls
    return invitation


def reissue_passphrase(vault: Vault, name: str, ttl: float | None = None) -> Invitation:
    """A new passphrase (the old one expired, or the machine was rebuilt): re-enrolling
    replaces and revokes the previous certificate."""
    from rehost.sources import physical

    ttl = _check_ttl(ttl)
    machine = get_machine(vault, name)
    if machine.source.kind != KIND:
        raise UsageError(f"{name} is a {machine.source.kind} source, not a physical machine with an agent")
    return physical.invite(name, _agent(machine), authority(vault), ttl)


def _check_ttl(ttl: float | None) -> float:
    """``ttl`` or the default, refused as the registry refuses a bad ``expires``."""
    from rehost.agent.pki import PASSPHRASE_TTL
    from rehost.sources import physical

    ttl = PASSPHRASE_TTL if ttl is None else ttl
    physical.PhysicalConfig(expires=f"{int(ttl)}s")
    return ttl


def has_agent(machine: MachineRow) -> bool:
    """The machine's source has an agent of its own (enrollment, heartbeats): a capability of
    its kind, not a kind name."""
    plugin = registry.find(machine.source.kind)
    return plugin is not None and plugin.capabilities.has_heartbeat


def _agent(machine: MachineRow) -> str:
    return str(machine.source.settings.get("agent") or machine.name)


def sync_disks(vault: Vault, machine: MachineRow) -> MachineRow:
    """Adopt what the machine's agent reported at enrollment (first look after it): its
    disks, and CPUs, memory, NICs and OS into the machine's spec. Machines of sources whose
    disks are known at registration come back as they are."""
    if machine.disks or not registry.capabilities(machine.source.kind).disks_arrive_later:
        return machine
    entry = authority(vault).machine(_agent(machine))
    if entry is None:
        raise UsageError(
            f"{machine.name}'s agent has not registered yet: run rehost-agent register on it "
            f"(a new passphrase: rehost source passphrase {machine.name})"
        )
    from rehost.sources import physical

    spec = physical.with_inventory(spec_of(machine), entry.get("inventory") or {})
    with vault.session() as s, s.begin():
        row = s.get(MachineRow, machine.id)
        assert row is not None
        row.disks = [DiskRow(index=d.index, path=d.ref, format=d.format, size=d.size) for d in spec.disks]
        row.spec = spec_json(spec)
        if row.state == "registered":
            row.state_reason = ""
    return get_machine(vault, machine.name)


def agent_view(
    vault: Vault, machine: MachineRow, enrolled: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The last heartbeat (seen, checked, error) and what the agent reported at enrollment:
    OS, CPUs, memory, NICs, disks with partition tables, consistency capabilities.
    ``enrolled``: every enrollment, when the caller read them once for many machines."""
    if enrolled is None:
        enrolled = authority(vault).machines()
    entry = enrolled.get(_agent(machine)) or {}
    inventory = dict(entry.get("inventory") or {})
    inventory.pop("agent", None)  # ports: how to reach it, not what it is
    return {**(machine.heartbeat or {}), "enrolled_at": entry.get("enrolled_at"),
            "address": entry.get("address"), "inventory": inventory}


def check_heartbeats(
    vault: Vault, machines: list[MachineRow], now: datetime | None = None, timeout: float = 10.0
) -> dict[str, dict[str, Any]]:
    """Ask every agent-backed machine's agent for a heartbeat and record the answer (or why
    there is none) on the machine: health explains a stuck item with it."""
    now = now or datetime.now(UTC)
    from rehost.agent.client import AgentClient, AgentError
    from rehost.sources.physical import PhysicalSource

    ca = authority(vault)

    seen: dict[str, dict[str, Any]] = {}
    for m in machines:
        if not has_agent(m) or m.state in ("migration_completed", "failed_over"):
            continue
        record: dict[str, Any] = dict(m.heartbeat or {})
        record["checked"] = now.isoformat()
        try:
            client: AgentClient = PhysicalSource.from_settings(
                m.source.settings, ca, vault.cache
            ).client(m.name)
            client.timeout = timeout
            answer = client.heartbeat()
            record.update(seen=now.isoformat(), error="", version=answer.get("version"),
                          frozen=answer.get("frozen") or [])
        except (AgentError, UsageError) as e:
            record["error"] = str(e)
        with vault.session() as s, s.begin():
            row = s.get(MachineRow, m.id)
            if row is not None:
                row.heartbeat = record
        m.heartbeat = record
        seen[m.name] = record
    return seen


def start_enrollment(vault: Vault, host: str, port: int, log: Any = print) -> EnrollmentServer:
    """The HTTPS endpoint ``rehost-agent register`` talks to (runs inside ``rehost serve``)."""
    from rehost.agent.pki import EnrollmentServer

    ca = authority(vault)
    try:
        server = EnrollmentServer(ca, host, port, on_enroll=lambda machine, address: log(
            f"agent of {machine} registered from {address}"))
    except OSError as e:
        raise UsageError(f"cannot listen for agents on {host}:{port}: {e.strerror or e} "
                         "(choose another with --enroll-listen HOST:PORT, or 'off')") from None
    log(f"agents register at {server.url} (server fingerprint {ca.server_fingerprint})")
    return server.start()
