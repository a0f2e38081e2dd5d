"""Jobs and their steps, persisted in the vault so progress survives a crash (ARCH §4)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from rehost.vault.models import Base, _now


def _job_id() -> str:
    return secrets.token_hex(6)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=_job_id)
    kind: Mapped[str] = mapped_column(String(32))
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"), nullable=True)
    machine_name: Mapped[str] = mapped_column(String(128), default="")
    # queued | running | succeeded | failed | cancelled  ("interrupted" is derived: running
    # in the database but its process is gone)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what steps hand on
    error: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the runner that claimed the job (host:pid:nonce); it holds the lease ``job:<id>`` while
    #: it runs, and a job whose lease lapsed is interrupted and picked up again
    holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: who asked for it, as the audit log names them ("token:NAME", "local:USER", "system:scheduler")
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=_now)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    steps: Mapped[list[StepRow]] = relationship(
        back_populates="job", order_by="StepRow.index", cascade="all, delete-orphan"
    )


class StepRow(Base):
    __tablename__ = "job_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    # pending | running | succeeded | failed | skipped | warning
    state: Mapped[str] = mapped_column(String(16), default="pending")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    job: Mapped[JobRow] = relationship(back_populates="steps")


class LeaseRow(Base):
    """A claim on a resource (a machine, the repository's prune phase, a point being read)
    by one runner until ``expires_at`` (unix time); the holder renews it while it works, so
    a runner killed with -9 frees it after one lease term (design §4, "concurrency")."""

    __tablename__ = "leases"
    resource: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(64), default="")
    machine_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
