"""Who did what (issue 19): an append-only log of every state-changing operation.

The edges record: the API one entry per state-changing request (``rehost.api.audit``), the
CLI one per state-changing command (``rehost.cli.context``). Both name the *actor*: a token
("token:NAME" with its role), the local user ("local:USER"), or rehost itself
("system:scheduler"). The actor of the code running now is a context variable, so a job
created anywhere below an edge carries the actor that asked for it.

Parameters are kept with their secrets removed (``redact``): a key that names a secret loses
its value, and a value that looks like one (an API token, a SAS signature, an account key, a
private key) is replaced wherever it appears. Only retention deletes entries.
"""

from __future__ import annotations

import contextvars
import getpass
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from rehost.errors import UsageError
from rehost.replication.retention import parse_duration
from rehost.vault import settings
from rehost.vault.models import AuditRow
from rehost.vault.vault import Vault

RETENTION_KEY = "audit_retention"
DEFAULT_RETENTION = "400d"
REDACTED = "***"
#: keys whose values are secrets, wherever they appear in parameters
SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|sas|credential|signature|\bsig\b|"
                        r"account_?key|private|connection_?string|api_?key", re.I)
#: values that are secrets whatever their key: rehost API tokens, SAS signatures, storage
#: account keys and connection strings, PEM private keys
SECRET_VALUE = re.compile(r"rht_[A-Za-z0-9_\-]+|(?<=[?&])sig=[^&\s\"']+|AccountKey=[^;\s\"']+|"
                          r"SharedAccessSignature=[^;\s\"']+|"
                          r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
MAX_VALUE = 500


@dataclass(frozen=True)
class Actor:
    name: str  # token:NAME | local:USER | anonymous | system:WHAT
    role: str = ""
    via: str = "cli"
    address: str = ""

    @classmethod
    def local(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(f"local:{user}", via="cli")


class ActorSlot:
    """The actor of a unit of work, filled in once it is known: an API request learns its
    caller in a dependency that runs in a copy of the request's context, so the context holds
    this mutable slot rather than the actor itself."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor


_slot: contextvars.ContextVar[ActorSlot | None] = contextvars.ContextVar("rehost_actor", default=None)


def current_actor() -> Actor:
    """Who the running code acts for; the local user when no edge said otherwise."""
    slot = _slot.get()
    return slot.actor if slot is not None else Actor.local()


@contextmanager
def acting_as(actor: Actor) -> Iterator[ActorSlot]:
    slot = ActorSlot(actor)
    token = _slot.set(slot)
    try:
        yield slot
    finally:
        _slot.reset(token)


def identified(actor: Actor) -> None:
    """The unit of work now knows who it acts for (an API request after authentication)."""
    slot = _slot.get()
    if slot is not None:
        slot.actor = actor


def redact(value: Any) -> Any:
    """``value`` with every secret replaced by ``***`` (see the module's docstring)."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "", False)
                else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        text = SECRET_VALUE.sub(REDACTED, value)
        return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def record(vault: Vault, operation: str, *, actor: Actor | None = None, object: str = "",
           params: Mapping[str, Any] | None = None, result: str = "ok", status: int | None = None,
           detail: str = "", job_id: str | None = None) -> AuditRow:
    """Append one entry (secrets removed), then apply retention now and then."""
    who = actor or current_actor()
    row = AuditRow(actor=who.name[:200], role=who.role, via=who.via, address=who.address[:64],
                   operation=operation[:200], object=str(redact(object))[:200],
                   params=redact(dict(params or {})), result=result, status=status,
                   detail=str(redact(detail))[:500], job_id=job_id)
    with vault.session() as s, s.begin():
        s.add(row)
    if row.id % 100 == 0:
        apply_retention(vault)
    return row


def retention_text(vault: Vault) -> str:
    return str(settings.get(vault, RETENTION_KEY, DEFAULT_RETENTION))


def retention(vault: Vault) -> timedelta:
    return parse_duration(retention_text(vault))


def set_retention(vault: Vault, text: str) -> timedelta:
    kept = parse_duration(text)
    if kept < timedelta(days=1):
        raise UsageError(f"audit retention {text!r} is too short: keep at least 1d")
    settings.put(vault, RETENTION_KEY, text)
    return kept


def apply_retention(vault: Vault, now: datetime | None = None) -> int:
    """Delete entries older than the retention; the number deleted."""
    cutoff = _naive((now or datetime.now(UTC)) - retention(vault))
    with vault.session() as s, s.begin():
        done = s.execute(delete(AuditRow).where(AuditRow.time < cutoff))
    return int(getattr(done, "rowcount", 0) or 0)


def entries(vault: Vault, *, since: datetime | None = None, actor: str | None = None,
            limit: int = 200) -> list[AuditRow]:
    """Newest first."""
    with vault.session() as s:
        q = select(AuditRow).order_by(AuditRow.id.desc())
        if since is not None:
            q = q.where(AuditRow.time >= _naive(since))
        if actor:
            q = q.where(AuditRow.actor == actor)
        return list(s.scalars(q.limit(limit)))


def _naive(t: datetime) -> datetime:
    """UTC without a zone, as the database's DateTime columns hold it."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``/``7d`` (that long ago) or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except UsageError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (24h, 7d) or an ISO time "
                         "(2026-12-05T10:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def entry_json(row: AuditRow) -> dict[str, Any]:
    t = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
    return {"id": row.id, "time": t.isoformat(), "actor": row.actor, "role": row.role, "via": row.via,
            "address": row.address, "operation": row.operation, "object": row.object,
            "params": row.params, "result": row.result, "status": row.status, "detail": row.detail,
            "job": row.job_id}
