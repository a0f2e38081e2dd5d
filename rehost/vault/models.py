"""Persistent state of a vault (SQLAlchemy 2). Recovery points are not here: the repository
is their single source of truth; the vault holds what the repository must not know about
(sources, machines, their disks and states)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SourceRow(Base):
    __tablename__ = "sources"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # image | qemu | physical | vsphere | hyperv
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    machines: Mapped[list[MachineRow]] = relationship(back_populates="source")


class MachineRow(Base):
    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"))
    state: Mapped[str] = mapped_column(String(32), default="registered")
    state_reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=_now)
    target_id: Mapped[str | None] = mapped_column(ForeignKey("targets.id"), nullable=True)
    network_map: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    #: where the machine runs after failover (target, VM name, folder), shown by `machines`
    placement: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policies.id"), nullable=True)
    #: the last replication attempt: time, seconds, bytes, error (what health explains)
    last_cycle: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: the source's own agent, as the server last saw it: time of the last answer, last
    #: check, error (health says why an item is stuck)
    heartbeat: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: what the source discovered beyond the disks: firmware, CPUs, memory, NICs, guest OS
    #: (``rehost.spec.MachineSpec`` fields; the disks are the DiskRows)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: its copy on a target that keeps replicas (``rehost.vault.replicas``): the target, the
    #: point the copy holds and when it was synced, the last sync's figures or error
    replica: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: what a failed-over copy must pass besides booting (``rehost.guest.probes.Check`` as
    #: JSON, in the order they were added): the verdict ``complete`` asks for
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    source: Mapped[SourceRow] = relationship(back_populates="machines")
    target: Mapped[TargetRow | None] = relationship()
    policy: Mapped[PolicyRow | None] = relationship()
    disks: Mapped[list[DiskRow]] = relationship(
        back_populates="machine", order_by="DiskRow.index", cascade="all, delete-orphan"
    )


class DiskRow(Base):
    __tablename__ = "disks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    index: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(4096))
    format: Mapped[str] = mapped_column(String(16))
    offset: Mapped[int] = mapped_column(Integer, default=0)
    length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    machine: Mapped[MachineRow] = relationship(back_populates="disks")


class TargetRow(Base):
    __tablename__ = "targets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # local | azure
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verified_ok: Mapped[bool | None] = mapped_column(nullable=True)  # None: never verified
    verify_report: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    verified_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class PolicyRow(Base):
    """A replication policy; changes apply to running replication at its next tick."""

    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    rpo_threshold_s: Mapped[int] = mapped_column(Integer, default=300)
    retention_s: Mapped[int] = mapped_column(Integer, default=24 * 3600)
    app_consistent_every_s: Mapped[int] = mapped_column(Integer, default=0)  # 0: never
    crash_consistent_every_s: Mapped[int] = mapped_column(Integer, default=30)
    bandwidth_bps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: windows with their own limit, e.g. work hours: [{"days", "start", "end", "bps"}]
    bandwidth_schedule: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class TokenRow(Base):
    """An API token (``rehost token create``). Only a SHA-256 of the secret is stored: a copy
    of the vault's database does not let anyone call the API."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # reader | operator | admin
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    last_used: Mapped[datetime | None] = mapped_column(nullable=True)
    #: None: never expires; a request with it after this time gets 401
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)


class PointRecordRow(Base):
    """One recovery point as its manifest says, copied here so listings, health and every
    scheduler tick need not decode manifests (design §6, "Point records"). The repository
    stays the truth: a row is written after its manifest, dropped after prune removed it,
    and rebuilt from the manifests whenever the two may differ (``rehost.vault.point_records``).
    No foreign key to ``machines``: a point outlives nothing in the database, and the
    repository may hold points of a machine whose row is gone."""

    __tablename__ = "point_records"
    __table_args__ = (Index("ix_point_records_machine_time", "machine_id", "time", "sequence"),)
    point_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    machine_id: Mapped[str] = mapped_column(String(64))
    #: the manifest's ISO-8601 UTC text (fixed width: sorts as it orders in time)
    time: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(Integer)
    consistency: Mapped[str] = mapped_column(String(32))
    #: the point a prune rewrote into this one (its manifest may linger after a crash: hidden)
    replaces: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: [{"index", "size", "full"}] per disk: what ``rehost points`` shows, not the maps
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class PointSummaryRow(Base):
    """Per machine, what every listing and tick asks of its points: how many, the latest and
    the latest app-consistent one. Recomputed from the machine's ``point_records`` in the
    transaction that changes them, so reading it costs one row however long the history.
    ``dirty`` counts marks not yet reconciled with the repository (an upgraded vault, a
    prune under way or cut short): a reader that sees one rebuilds from the manifests first."""

    __tablename__ = "point_summaries"
    machine_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    points: Mapped[int] = mapped_column(Integer, default=0)
    latest_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_time: Mapped[str | None] = mapped_column(String(40), nullable=True)
    latest_app_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_app_time: Mapped[str | None] = mapped_column(String(40), nullable=True)
    dirty: Mapped[int] = mapped_column(Integer, default=0)


class AgentCARow(Base):
    """The agents' certificate authority, one row per item (``rehost.agent.ca_store``): the
    PEMs (keys sealed with the repository's keys, so encrypted in an encrypted vault) and the
    state as JSON with a ``version`` every change compares and bumps: every host and worker
    of a fleet signs, verifies and revokes with this one CA."""

    __tablename__ = "agent_ca"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    version: Mapped[int] = mapped_column(Integer, default=0)


class PlanRow(Base):
    """A recovery plan (issue 15): machines fail over in ordered groups, the machines of a
    group at once, so an application comes up in the order it needs (database before web).
    ``actions`` are per group, in the order they run: ``{"group", "kind": pre|post|manual,
    "script", "timeout_s", "text"}``; the members are ``PlanMachineRow`` so the database
    itself refuses a machine in two plans."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    members: Mapped[list[PlanMachineRow]] = relationship(
        back_populates="plan", cascade="all, delete-orphan", order_by="PlanMachineRow.position"
    )


class PlanMachineRow(Base):
    """A machine's place in a plan: its group (1 first) and the order it was added in. The
    machine is the key: one machine, at most one plan (two plans failing over the same machine
    would fight over its test copy)."""

    __tablename__ = "plan_machines"
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    group: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    plan: Mapped[PlanRow] = relationship(back_populates="members")
    machine: Mapped[MachineRow] = relationship()


class AuditRow(Base):
    """One state-changing operation (CLI or API) and who made it (issue 19). Append-only: no
    code path updates a row, and only retention (``rehost.vault.audit``) deletes old ones."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=_now, index=True)
    #: "token:NAME", "local:USER", "anonymous" or "system:scheduler"
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="")
    #: cli | api | ui | system
    via: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(64), default="")
    operation: Mapped[str] = mapped_column(String(200))
    object: Mapped[str] = mapped_column(String(200), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ok | error | denied
    result: Mapped[str] = mapped_column(String(8))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(String(500), default="")
    job_id: Mapped[str | None] = mapped_column(String(16), nullable=True)


class SettingRow(Base):
    """The vault's own settings, shared by every host of a fleet (allowed roots, audit
    retention): changed with ``rehost config`` on a host, never through the API."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class CycleRecordRow(Base):
    """One replication cycle, however it ran (scheduler, ``rehost replicate``, the API): when
    it ended, how long it took, what it changed and shipped, its point or its error. The item
    page draws its charts from these (``rehost.vault.cycle_history``); retention deletes rows
    older than the machine's policy retention or 7 days, whichever is longer. No foreign key:
    like ``point_records``, a history may outlive its machine row until retention drops it."""

    __tablename__ = "cycle_records"
    __table_args__ = (Index("ix_cycle_records_machine_time", "machine_id", "time"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(String(64))
    #: when the cycle ended (UTC)
    time: Mapped[datetime] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float)
    changed_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: what the cycle wrote to the repository (after dedup and compression)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    point_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the point's time (the manifest's text): the RPO chart's sawtooth drops to it
    point_time: Mapped[str | None] = mapped_column(String(40), nullable=True)
    consistency: Mapped[str] = mapped_column(String(32), default="")
    #: "" when the cycle made its point
    error: Mapped[str] = mapped_column(String(500), default="")
