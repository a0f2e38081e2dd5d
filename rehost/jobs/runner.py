"""Running jobs step by step, persisting every transition so a crash can be resumed.

A job kind registers a *plan*: a function that lists the job's steps from its parameters.
Because the plan is rebuilt from the persisted parameters, ``resume`` after a kill -9 runs
the same steps again, starting with the one that was cut short. Steps are written to be
safe to run twice (they check what already exists before acting).
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from rehost.errors import InvalidState, NotFound, RehostError
from rehost.jobs import leases
from rehost.jobs.models import JobRow, StepRow
from rehost.process import alive
from rehost.vault import audit
from rehost.vault.audit import Actor
from rehost.vault.vault import Vault

DONE_STATES = ("succeeded", "skipped", "warning")
PROGRESS_EVERY_S = 0.5


class SkipStep(Exception):
    """Raised by a step that has nothing to do; the message says why."""


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[StepContext], str | None]
    #: False: a failure is recorded as a warning and the job goes on (e.g. source shutdown).
    must_succeed: bool = True
    #: From this step on the job cannot be cancelled (e.g. replication has been stopped).
    point_of_no_return: bool = False


class Observer(Protocol):
    def step_started(self, job: JobRow, step: StepRow) -> None: ...
    def step_progress(self, job: JobRow, step: StepRow) -> None: ...
    def step_ended(self, job: JobRow, step: StepRow) -> None: ...


Plan = Callable[[Vault, JobRow], list[Step]]
_PLANS: dict[str, Plan] = {}
#: the modules whose ``@plan`` functions define the job kinds. They are imported when a kind is
#: not known yet: a command line imports only its own command's modules (start-up time), and
#: ``rehost jobs`` still has to show a failover job's steps.
PLAN_MODULES = ("rehost.vault.cycles", "rehost.vault.failover", "rehost.vault.plan_jobs")


def plan(kind: str) -> Callable[[Plan], Plan]:
    """Register the step list of a job kind."""

    def register(fn: Plan) -> Plan:
        _PLANS[kind] = fn
        return fn

    return register


def _plan_of(kind: str) -> Plan:
    if kind not in _PLANS:
        for module in PLAN_MODULES:
            importlib.import_module(module)
    if kind not in _PLANS:
        raise NotFound(f"unknown job kind {kind!r}")
    return _PLANS[kind]


class StepContext:
    """What a running step sees: the job's parameters, outputs to hand on, and progress."""

    def __init__(self, vault: Vault, job: JobRow, step: StepRow, observer: Observer | None) -> None:
        self.vault = vault
        self.job = job
        self.step = step
        self.params: dict[str, Any] = dict(job.params)
        self.outputs: dict[str, Any] = dict(job.outputs)
        self._observer = observer
        self._last = 0.0

    def progress(self, done: int, total: int) -> None:
        self.step.done, self.step.total = done, total
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or done >= total:
            self._last = now
            _save_step(self.vault, self.step)
        if self._observer:
            self._observer.step_progress(self.job, self.step)

    def save_outputs(self, **values: Any) -> None:
        """Persist values at once, so a resumed job finds what this step already made."""
        self.outputs.update(values)
        with self.vault.session() as s, s.begin():
            row = s.get(JobRow, self.job.id)
            assert row is not None
            row.outputs = dict(self.outputs)
        self.job.outputs = dict(self.outputs)


def create_job(vault: Vault, kind: str, machine_id: str | None, machine_name: str,
               params: dict[str, Any], *, creator: str | None = None) -> JobRow:
    """``creator``: the holder name of the process that will run the job itself (no broker);
    if that process dies before it starts the job, the queued job is interrupted, not a job
    that holds its machine forever."""
    make_steps = _plan_of(kind)
    job = JobRow(kind=kind, machine_id=machine_id, machine_name=machine_name, params=params,
                 actor=audit.current_actor().name, holder=creator)
    steps = make_steps(vault, job)
    job.steps = [StepRow(index=i, name=st.name, title=st.title) for i, st in enumerate(steps)]
    with vault.session() as s, s.begin():
        s.add(job)
    return get_job(vault, job.id)


def get_job(vault: Vault, job_id: str) -> JobRow:
    with vault.session() as s:
        job = s.scalar(select(JobRow).where(JobRow.id == job_id).options(selectinload(JobRow.steps)))
        if job is None:
            matches = list(s.scalars(select(JobRow).where(JobRow.id.startswith(job_id))
                                     .options(selectinload(JobRow.steps))))
            if len(matches) != 1:
                raise NotFound(f"no job {job_id!r} (see: rehost jobs)")
            job = matches[0]
        return job


def list_jobs(vault: Vault, machine_id: str | None = None, limit: int = 50) -> list[JobRow]:
    with vault.session() as s:
        q = select(JobRow).options(selectinload(JobRow.steps)).order_by(JobRow.created_at.desc())
        if machine_id:
            q = q.where(JobRow.machine_id == machine_id)
        return list(s.scalars(q.limit(limit)))


def effective_state(job: JobRow, live: set[str] | None = None) -> str:
    """``interrupted`` when the database says running but its runner is gone: its process on
    this host has died, or (``live``: the job ids whose lease is held) its lease lapsed."""
    if job.state == "queued" and job.holder and not job.holder.startswith(TAKEN_BY) \
            and leases.holder_dead(job.holder):
        return "interrupted"  # the process that queued it to run it itself died first
    if job.state != "running":
        return job.state
    if live is not None:
        return "running" if job.id in live else "interrupted"
    if job.holder:
        return "interrupted" if leases.holder_dead(job.holder) else "running"
    return "interrupted" if job.pid is None or not alive(job.pid) else "running"


def live_jobs(vault: Vault) -> set[str]:
    """Ids of the jobs whose runner holds their lease now (on any host)."""
    return {r.resource.partition(":")[2] for r in leases.holders(vault, "job:")}


def running_jobs(vault: Vault, machine_id: str) -> list[JobRow]:
    live = live_jobs(vault)
    return [j for j in list_jobs(vault, machine_id) if effective_state(j, live) in ("running", "queued")]


#: a queued job's holder once a worker has taken its message, until the worker claims it
TAKEN_BY = "worker:"


def live_workers(vault: Vault) -> set[str]:
    """The ``worker:<host>:<pid>`` leases held now: the workers that are alive."""
    return {r.resource for r in leases.holders(vault, TAKEN_BY)}


def taken_by_a_dead_worker(job: JobRow, workers: set[str]) -> bool:
    """A queued job whose message a worker took and then died before it claimed the job: the
    message is gone with it (acknowledged on receipt), so only a resend runs the job."""
    return job.state == "queued" and bool(job.holder) and str(job.holder).startswith(TAKEN_BY) \
        and job.holder not in workers


def resumable_jobs(vault: Vault, queued_for: float = leases.TTL_S) -> list[JobRow]:
    """Jobs queued for ``queued_for`` seconds that nobody runs, and running ones whose runner
    died: what ``rehost serve`` picks up again, oldest first. (A job just queued is left to
    the command or request that queued it, which runs it at once. A plan's child job, with a
    ``parent`` in its params, is left to its parent, which continues it: resumed on its own
    too, it would race its parent for the machine.)"""
    live, workers = live_jobs(vault), live_workers(vault)
    old = datetime.now(UTC) - timedelta(seconds=queued_for)
    with vault.session() as s:
        jobs = list(s.scalars(select(JobRow).where(JobRow.state.in_(("queued", "running")))
                              .options(selectinload(JobRow.steps)).order_by(JobRow.created_at)))
    return [j for j in jobs if not (j.params or {}).get("parent") and (
        (j.state == "queued" and j.id not in live and _aware(j.created_at) < old)
        or effective_state(j, live) == "interrupted" or taken_by_a_dead_worker(j, workers))]


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def run_job(vault: Vault, job_id: str, observer: Observer | None = None) -> JobRow:
    """Run (or continue) a job's steps in order; returns the job in its final state.

    The runner claims the job by its lease (a second runner is refused, and one that died
    frees it), and holds the job's machine for the whole job: another operation on that
    machine is refused with the reason, other machines are not affected.
    """
    job = get_job(vault, job_id)
    claim = leases.try_acquire(vault, f"job:{job.id}", job.kind, machine_id=job.machine_id, job_id=job.id)
    if not isinstance(claim, leases.Lease):
        raise InvalidState(f"job {job.id} is running in {claim.holder.rsplit(':', 1)[0]}")
    try:
        job = get_job(vault, job.id)  # as it is now that it is ours
        if job.state in ("succeeded", "cancelled"):
            raise InvalidState(f"job {job.id} has already {job.state}")
        with ExitStack() as stack:
            if job.machine_id is not None:
                try:
                    stack.enter_context(
                        leases.machine(vault, job.machine_id, job.machine_name, job.kind, job.id))
                except InvalidState as e:
                    if job.state == "queued":  # it never started: it failed, and says why
                        _update_job(vault, job, state="failed", error=str(e), ended_at=_now())
                    raise
            # what the job creates (a plan's child jobs) is done for whoever asked for the job
            with audit.acting_as(Actor(job.actor or "unknown", via="system")):
                done = _run_steps(vault, job, claim.holder, observer)
            _audit_end(vault, done)
            return done
    finally:
        claim.release()


def _audit_end(vault: Vault, job: JobRow) -> None:
    """A job started by someone ends with an entry of its own: its request's entry says only
    that it was accepted. Jobs of rehost itself (the scheduler's cycles) are not recorded."""
    if job.state not in ("succeeded", "failed", "cancelled") or job.actor.startswith("system:"):
        return
    audit.record(vault, f"job {job.kind} ended", actor=Actor(job.actor or "unknown", via="system"),
                 object=job.machine_name, result="ok" if job.state == "succeeded" else "error",
                 detail=job.error if job.state != "succeeded" else "", job_id=job.id,
                 params={"state": job.state})


def _run_steps(vault: Vault, job: JobRow, holder: str, observer: Observer | None) -> JobRow:
    steps = _plan_of(job.kind)(vault, job)
    if [s.name for s in steps] != [r.name for r in job.steps]:
        # the plan depends on the target's capabilities, which changed since the job was made
        _update_job(vault, job, state="failed", ended_at=_now(),
                    error=f"the steps of a {job.kind} job changed since it was created (was the "
                    "machine's target changed?): start a new one")
        return get_job(vault, job.id)
    _update_job(vault, job, state="running", pid=os.getpid(), holder=holder, error="",
                started_at=job.started_at or _now(), ended_at=None)
    for spec, row in zip(steps, job.steps, strict=True):
        if row.state in DONE_STATES:
            continue
        ctx = StepContext(vault, job, row, observer)
        row.state, row.started_at, row.ended_at, row.detail = "running", _now(), None, ""
        _save_step(vault, row)
        if observer:
            observer.step_started(job, row)
        try:
            detail = spec.run(ctx)
            row.state, row.detail = "succeeded", detail or ""
        except SkipStep as e:
            row.state, row.detail = "skipped", str(e)
        except Exception as e:  # every failure is recorded on the step, then judged
            row.detail = _describe(e)
            if spec.must_succeed:
                row.state, row.ended_at = "failed", _now()
                _save_step(vault, row)
                if observer:
                    observer.step_ended(job, row)
                _update_job(vault, job, state="failed", error=f"{row.title}: {row.detail}", ended_at=_now())
                return get_job(vault, job.id)
            row.state = "warning"
        row.ended_at = _now()
        _save_step(vault, row)
        job.outputs = ctx.outputs
        if observer:
            observer.step_ended(job, row)
    _update_job(vault, job, state="succeeded", ended_at=_now())
    return get_job(vault, job.id)


def forget_jobs(vault: Vault, machine_id: str | None, kind: str, *, keep: int,
                where: dict[str, Any] | None = None) -> int:
    """Delete all but the newest ``keep`` ended jobs of one kind and machine whose parameters
    include ``where`` (the scheduler's cycles: the job list stays readable)."""
    ended = ("succeeded", "failed", "cancelled")
    with vault.session() as s, s.begin():
        jobs = list(s.scalars(select(JobRow).where(JobRow.kind == kind, JobRow.machine_id == machine_id,
                                                   JobRow.state.in_(ended))
                              .order_by(JobRow.created_at.desc())))
        old = [j for j in jobs if all(j.params.get(k) == v for k, v in (where or {}).items())][keep:]
        for j in old:
            s.delete(j)
    return len(old)


def can_cancel(vault: Vault, job: JobRow) -> bool:
    steps = _plan_of(job.kind)(vault, job)
    return not any(spec.point_of_no_return and row.state != "pending"
                   for spec, row in zip(steps, job.steps, strict=True))


def cancel_job(vault: Vault, job_id: str) -> JobRow:
    job = get_job(vault, job_id)
    state = effective_state(job, live_jobs(vault))
    if state in ("succeeded", "cancelled"):
        raise InvalidState(f"job {job.id} has already {state}")
    if state == "running":
        raise InvalidState(f"job {job.id} is running; stop its process first, then cancel")
    if not can_cancel(vault, job):
        raise InvalidState(f"job {job.id} is past its point of no return and cannot be cancelled; "
                           f"resume it with: rehost job resume {job.id}")
    _update_job(vault, job, state="cancelled", ended_at=_now())
    return get_job(vault, job.id)


def _describe(e: BaseException) -> str:
    if isinstance(e, RehostError) and e.user_error:
        return str(e)
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"


def _save_step(vault: Vault, step: StepRow) -> None:
    with vault.session() as s, s.begin():
        row = s.get(StepRow, step.id)
        assert row is not None
        for field in ("state", "done", "total", "detail", "started_at", "ended_at"):
            setattr(row, field, getattr(step, field))


def _update_job(vault: Vault, job: JobRow, **values: Any) -> None:
    with vault.session() as s, s.begin():
        row = s.get(JobRow, job.id)
        assert row is not None
        for k, v in values.items():
            setattr(row, k, v)
            setattr(job, k, v)




def _now() -> datetime:
    return datetime.now(UTC)
