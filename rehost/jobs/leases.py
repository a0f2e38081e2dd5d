"""Leases: who may work on what, by machine, in the vault's database (design §4).

A lease is a row naming a resource (``machine:<id>``, ``prune``, ``writer:<n>``,
``reader:<n>``), its holder and an expiry. The holder renews it while it works (a keeper
thread per process), so a runner killed with -9 frees its machines after one lease term, at
once when it ran on this host (its pid is gone).

Why taking a lease is race-free on SQLite and PostgreSQL alike (``try_acquire``): it is
made of single statements, each of which takes effect or does not, and never of a read
followed by a blind write.
- A free resource is taken by ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key. Of
  two processes inserting at once, PostgreSQL makes the second wait for the first's
  transaction and then do nothing (SQLite's write lock queues them): one row, one winner.
- A stale lease (expired, or its holder's process on this host is gone) is taken over by
  ``UPDATE ... WHERE resource = r AND holder = h AND expires_at = e``, with the holder and
  expiry as read: a compare-and-swap. Under READ COMMITTED PostgreSQL locks the row, and a
  second UPDATE waiting on that lock re-checks its WHERE against the committed new row, which
  no longer matches; so exactly one of two racing takers wins, and a holder that renewed
  meanwhile (a new ``expires_at``) keeps its lease.
No SELECT ... FOR UPDATE or table lock is needed, and no isolation level beyond PostgreSQL's
default READ COMMITTED (``Vault`` sets it explicitly).

- A machine's lease makes operations on one machine exclusive (a cycle, a failover, a
  completion); different machines replicate, fail over and complete at the same time.
- The repository needs one rule only: prune's delete phase runs alone. Every cycle holds a
  ``writer`` lease; prune takes ``prune``, then waits until the writers are gone, and a new
  writer waits while ``prune`` is held. Readers of points (a served point, an export) hold
  ``reader`` leases that name their points, and prune leaves those points and their packs.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from rehost.errors import InvalidState
from rehost.jobs.models import LeaseRow
from rehost.process import alive
from rehost.vault.vault import Vault

#: a holder that has not renewed for this long has died (its leases may be taken over)
TTL_S = 30.0
#: how often the keeper renews this process's leases
RENEW_EVERY_S = TTL_S / 3
#: how long prune waits for running cycles to finish, and a cycle for prune to finish
WAIT_S = 600.0
PRUNE = "prune"

_HOST = socket.gethostname()


def new_holder() -> str:
    """A holder name unique to one acquisition: host, pid (to see a dead local holder at once)
    and a nonce (threads of one process are different holders)."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_dead(holder: str) -> bool:
    """True when the holder ran on this host and its process is gone."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == _HOST and pid.isdigit() and not alive(int(pid))


@dataclass
class Lease:
    resource: str
    holder: str
    operation: str
    vault: Vault

    def release(self) -> None:
        _keeper.forget(self)
        with self.vault.session() as s, s.begin():
            s.execute(delete(LeaseRow).where(LeaseRow.resource == self.resource,
                                             LeaseRow.holder == self.holder))


def _stale(row: LeaseRow, now: float) -> bool:
    return row.expires_at < now or holder_dead(row.holder)


def try_acquire(
    vault: Vault, resource: str, operation: str, *, machine_id: str | None = None,
    job_id: str | None = None, detail: dict[str, Any] | None = None,
) -> Lease | LeaseRow:
    """The lease, or the row of whoever holds it (to say why not).

    Insert-if-absent, else read the holder, else compare-and-swap a stale one (module doc).
    """
    holder = new_holder()
    now = time.time()
    values = {"holder": holder, "operation": operation, "machine_id": machine_id, "job_id": job_id,
              "detail": detail or {}, "acquired_at": now, "expires_at": now + TTL_S}
    for _ in range(3):
        if _insert_if_absent(vault, resource, values):
            return _keeper.keep(Lease(resource, holder, operation, vault))
        with vault.session() as s:
            row = s.get(LeaseRow, resource)
        if row is None:
            continue  # released meanwhile: insert again
        if not _stale(row, now):
            return row
        with vault.session() as s, s.begin():  # take it over only from the holder and term we saw
            taken = s.connection().execute(update(LeaseRow).where(LeaseRow.resource == resource,
                                                     LeaseRow.holder == row.holder,
                                                     LeaseRow.expires_at == row.expires_at)
                              .values(**values))
        if taken.rowcount == 1:
            return _keeper.keep(Lease(resource, holder, operation, vault))
    with vault.session() as s:
        row = s.get(LeaseRow, resource)
    if row is None:
        raise InvalidState(f"could not take the lease on {resource}: it changed hands too often; try again")
    return row


def _insert_if_absent(vault: Vault, resource: str, values: dict[str, Any]) -> bool:
    """Insert the lease row unless the resource has one; True when this call inserted it.

    ``ON CONFLICT DO NOTHING`` rather than catching the unique violation: on PostgreSQL a
    failed INSERT is an error the server logs, and every busy machine would log one.
    ``RETURNING`` says whether the row went in (a driver's rowcount for an ORM insert is not
    reliable across dialects).
    """
    make = vault.insert_or_ignore()
    if make is not None:
        stmt = (make(LeaseRow).values(resource=resource, **values)
                .on_conflict_do_nothing(index_elements=[LeaseRow.resource])
                .returning(LeaseRow.resource))
        with vault.session() as s, s.begin():
            return s.connection().execute(stmt).first() is not None
    try:
        with vault.session() as s, s.begin():
            s.connection().execute(insert(LeaseRow).values(resource=resource, **values))
    except IntegrityError:
        return False
    return True


def busy_reason(row: LeaseRow) -> str:
    since = time.time() - row.acquired_at
    job = f" (job {row.job_id})" if row.job_id else ""
    return f"{row.operation}{job} has been running for {since:.0f}s in {row.holder.rsplit(':', 1)[0]}"


_held = threading.local()


@contextmanager
def machine(vault: Vault, machine_id: str, name: str, operation: str,
            job_id: str | None = None) -> Iterator[Lease | None]:
    """Hold a machine for one operation, or refuse at once with what holds it.

    Re-entrant in one thread: a failover job's final sync replicates the machine its job
    already holds.
    """
    resource = f"machine:{machine_id}"
    held: dict[str, Lease] = _held.__dict__.setdefault("leases", {})
    if resource in held:
        yield held[resource]
        return
    got = try_acquire(vault, resource, operation, machine_id=machine_id, job_id=job_id)
    if isinstance(got, LeaseRow):
        raise InvalidState(f"{name} is busy: {busy_reason(got)}; wait for it, or see rehost jobs")
    held[resource] = got
    try:
        yield got
    finally:
        del held[resource]
        got.release()


def holders(vault: Vault, prefix: str, now: float | None = None) -> list[LeaseRow]:
    """Live leases whose resource starts with ``prefix``."""
    now = time.time() if now is None else now
    with vault.session() as s:
        rows = list(s.scalars(select(LeaseRow).where(LeaseRow.resource.startswith(prefix))))
    return [r for r in rows if not _stale(r, now)]


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not done():
        if time.monotonic() > deadline:
            raise InvalidState(f"gave up after {timeout:.0f}s waiting for {what}; try again later")
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


@contextmanager
def writing(vault: Vault, operation: str, machine_id: str | None = None,
            timeout: float = WAIT_S) -> Iterator[None]:
    """A repository writer (one cycle): waits while prune deletes, then holds prune off."""
    while True:
        lease = try_acquire(vault, f"writer:{secrets.token_hex(8)}", operation, machine_id=machine_id)
        assert isinstance(lease, Lease)  # a fresh name is never held
        if not holders(vault, PRUNE):  # registered first, then checked: prune sees us, or we it
            break
        lease.release()
        _wait("prune to finish", lambda: not holders(vault, PRUNE), timeout)
    try:
        yield
    finally:
        lease.release()


@contextmanager
def pruning(vault: Vault, timeout: float = WAIT_S) -> Iterator[None]:
    """Prune's delete phase: alone among writers (new ones wait; running cycles finish)."""
    got: list[Lease] = []

    def take() -> bool:
        lease = try_acquire(vault, PRUNE, "prune")
        if isinstance(lease, Lease):
            got.append(lease)
        return bool(got)

    _wait("another prune to finish", take, timeout)
    try:
        _wait("running replication cycles to finish", lambda: not holders(vault, "writer:"), timeout)
        yield
    finally:
        got[0].release()


@contextmanager
def reading(vault: Vault, points: Iterable[str], operation: str = "read") -> Iterator[None]:
    """Points being read (served, exported, checked): prune keeps them and their packs."""
    lease = try_acquire(vault, f"reader:{secrets.token_hex(8)}", operation,
                        detail={"points": sorted(points)})
    assert isinstance(lease, Lease)
    try:
        yield
    finally:
        lease.release()


def points_being_read(vault: Vault) -> set[str]:
    return {p for r in holders(vault, "reader:") for p in r.detail.get("points", [])}


class _Keeper:
    """One thread per process renews every lease the process holds."""

    def __init__(self) -> None:
        self._leases: dict[tuple[int, str, str], Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, lease: Lease) -> Lease:
        with self._lock:
            self._leases[(id(lease.vault), lease.resource, lease.holder)] = lease
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rehost-lease-keeper", daemon=True)
                self._thread.start()
        return lease

    def forget(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop((id(lease.vault), lease.resource, lease.holder), None)

    def _run(self) -> None:
        while True:
            time.sleep(RENEW_EVERY_S)
            with self._lock:
                leases = list(self._leases.values())
            for lease in leases:
                try:
                    with lease.vault.session() as s, s.begin():
                        s.execute(update(LeaseRow).where(LeaseRow.resource == lease.resource,
                                                         LeaseRow.holder == lease.holder)
                                  .values(expires_at=time.time() + TTL_S))
                except Exception:  # a closed vault, a busy database: the next round retries
                    continue


_keeper = _Keeper()
