"""Replication cycles as jobs: from the CLI, the API and the scheduler alike (design §4).

A cycle is a job of one step, so it shows in ``rehost jobs`` with its progress, claims its
machine by lease like every other operation, and a cycle cut short by a crash is visible as
interrupted and picked up again by ``rehost serve``. The scheduler's cycles would fill the
job list, so only the last few of each machine are kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rehost.errors import InvalidState, RehostError
from rehost.jobs import dispatch
from rehost.jobs.models import JobRow, StepRow
from rehost.jobs.runner import (
    SkipStep,
    Step,
    StepContext,
    create_job,
    forget_jobs,
    plan,
    running_jobs,
)
from rehost.replication.cycle import CycleResult
from rehost.repository.writer import WriteStats
from rehost.units import human
from rehost.vault import point_records, policies, replicas, targets
from rehost.vault.inventory import get_machine
from rehost.vault.models import MachineRow
from rehost.vault.point_records import PointSummary
from rehost.vault.protection import replicate
from rehost.vault.states import require
from rehost.vault.vault import Vault

REPLICATE = "replicate"
#: scheduled cycles kept in the job list per machine (older ones are forgotten)
KEEP_SCHEDULED = 20


def start_replicate_job(
    vault: Vault, name: str, *, app_consistent: bool = False, bandwidth_bps: int | None = None,
    scheduled: bool = False,
) -> JobRow:
    """Refuse at once what replicate would refuse (state, a job already running), then queue."""
    machine = get_machine(vault, name)
    busy = running_jobs(vault, machine.id)
    if busy:
        raise InvalidState(f"{name} has a {busy[0].kind} job running ({busy[0].id}); wait for it")
    require("replicate", machine.state, name, machine.state_reason)
    misfit = targets.misfits(vault, machine)
    if misfit:
        raise InvalidState(misfit)
    params: dict[str, Any] = {"app_consistent": app_consistent}
    policy = policies.policy_of(vault, machine)
    if bandwidth_bps is None and not scheduled and policy is not None:
        # the policy caps every cycle, the first full copy above all (the scheduler passes its own)
        bandwidth_bps = policies.bandwidth_at(policy, datetime.now())
    if bandwidth_bps:
        params["bandwidth_bps"] = bandwidth_bps
    if scheduled:
        params["scheduled"] = True
    first_for = _first_point_for(vault, machine)
    if first_for:
        params["readiness_target"] = first_for  # decided now: a resumed job keeps its steps
    return create_job(vault, REPLICATE, machine.id, name, params, creator=dispatch.creator(vault))


def _first_point_for(vault: Vault, machine: MachineRow) -> str | None:
    """The target whose readiness the first point is checked for at enable time: the machine's
    (or the vault's only) target, when the machine has no point yet; None otherwise."""
    if point_records.summaries(vault).get(machine.id, PointSummary()).points:
        return None
    try:
        return targets.target_of(vault, machine).name
    except RehostError:  # no target yet: the failover checks it, against the target it gets
        return None


class _InProcess:
    """What a caller in this process hands its job (a progress bar) and gets back (the
    cycle's result, or the very exception, so the CLI reports it as before)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.progress: dict[str, Callable[[int, int], None]] = {}
        self.results: dict[str, CycleResult | BaseException] = {}

    def pop(self, job_id: str) -> CycleResult | BaseException | None:
        with self._lock:
            self.progress.pop(job_id, None)
            return self.results.pop(job_id, None)


_here = _InProcess()


def replicate_job(
    vault: Vault, name: str, progress: Callable[[int, int], None] | None = None, *,
    app_consistent: bool = False, bandwidth_bps: int | None = None, scheduled: bool = False,
) -> CycleResult:
    """One cycle as a job run here and now; raises what the cycle raised."""
    job = start_replicate_job(vault, name, app_consistent=app_consistent, bandwidth_bps=bandwidth_bps,
                              scheduled=scheduled)
    if progress is not None:
        _here.progress[job.id] = progress
    # run here, the step calls the hook itself; run by a worker, its rows carry the progress
    remote = _Forward(progress) if progress is not None and dispatch.broker_url(vault) else None
    try:
        done = dispatch.execute(vault, job.id, remote)
    finally:
        outcome = _here.pop(job.id)
    if outcome is None and done.state == "succeeded":  # a worker ran it: the result is its record
        outcome = _from_outputs(vault, done)
    if scheduled:
        forget_jobs(vault, done.machine_id, REPLICATE, keep=KEEP_SCHEDULED, where={"scheduled": True})
    if isinstance(outcome, CycleResult):
        sync = next((st for st in done.steps if st.name == "sync_replica"), None)
        if sync is not None and sync.state != "skipped":
            # the cycle summary saves replica=None; a failed sync saves nothing over it
            synced = done.outputs.get("replica") or {}
            outcome.replica = {**synced, "state": sync.state, "detail": sync.detail}
        return outcome
    if isinstance(outcome, BaseException):
        raise outcome
    raise InvalidState(f"replication job {done.id} of {name} ended {done.state}: {done.error}")


class _Forward:
    """A worker's progress, as the job's rows show it, to the caller's progress bar."""

    def __init__(self, progress: Callable[[int, int], None]) -> None:
        self.progress = progress

    def step_started(self, job: JobRow, step: StepRow) -> None:
        pass

    def step_progress(self, job: JobRow, step: StepRow) -> None:
        if step.name == "replicate" and step.total:
            self.progress(step.done, step.total)

    def step_ended(self, job: JobRow, step: StepRow) -> None:
        self.step_progress(job, step)


def _from_outputs(vault: Vault, job: JobRow) -> CycleResult:
    """The cycle's result as another process's job recorded it (``cycle_summary``)."""
    o = job.outputs
    stats = WriteStats(blobs_new=int(o.get("new_blobs", 0)), raw_bytes_new=int(o.get("new_bytes", 0)),
                       stored_bytes=int(o.get("stored_bytes", 0)))
    point = vault.repo.load_point_exact(str(o["point"]))
    return CycleResult(point, stats, bytes_read=int(o.get("bytes_read", 0)),
                       changed_bytes=int(o.get("changed_bytes", 0)), seconds=float(o.get("seconds", 0)),
                       resumed_bytes=int(o.get("resumed_bytes", 0)), notes=list(o.get("notes") or []))


def cycle_summary(r: CycleResult) -> dict[str, Any]:
    """What a cycle did, as the job's outputs and the CLI's --json show it."""
    s = r.stats
    return {"point": r.point.id, "time": r.point.time, "consistency": r.point.consistency.value,
            "bytes_read": r.bytes_read, "changed_bytes": r.changed_bytes,
            "new_blobs": s.blobs_new, "new_bytes": s.raw_bytes_new,
            "stored_bytes": s.stored_bytes, "seconds": round(r.seconds, 3),
            "digests": r.digest_source, "notes": r.notes, "resumed_bytes": r.resumed_bytes,
            "replica": r.replica}


@plan(REPLICATE)
def _replicate_plan(vault: Vault, job: JobRow) -> list[Step]:
    def run(ctx: StepContext) -> str:
        hook = _here.progress.get(ctx.job.id)

        def progress(done: int, total: int) -> None:
            ctx.progress(done, total)
            if hook:
                hook(done, total)

        try:
            r = replicate(ctx.vault, ctx.job.machine_name, progress,
                          app_consistent=bool(ctx.params.get("app_consistent")),
                          bandwidth_bps=ctx.params.get("bandwidth_bps"))
        except BaseException as e:
            _here.results[ctx.job.id] = e
            raise
        _here.results[ctx.job.id] = r
        ctx.save_outputs(**cycle_summary(r))
        return (f"point {r.point.short_id} ({r.point.consistency.value}): read {r.bytes_read} bytes, "
                f"{r.changed_bytes} changed, stored {r.stats.stored_bytes}")

    def sync_replica(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        point = ctx.vault.repo.load_point_exact(ctx.outputs["point"])
        r = replicas.sync(ctx.vault, machine, point, ctx.progress)
        if r is None:
            raise SkipStep("the machine's target keeps no replica")
        ctx.save_outputs(replica=r.to_json())
        note = f"; {r.note}" if r.note else ""
        return (f"replica on {machine.replica.get('target')} at point {point.short_id}: "
                f"{human(r.bytes_written)} written in {r.requests} requests ({r.seconds:.1f}s){note}")

    def first_readiness(ctx: StepContext) -> str:
        """Issue 16: the first point is checked when replication is enabled, so a guest that
        will not boot on its target is known days before its failover (which checks again)."""
        from rehost.vault import readiness

        target = str(ctx.params["readiness_target"])
        g = readiness.gate(ctx.vault, ctx.job.machine_name, target=target, point=str(ctx.outputs["point"]))
        failed = g.failed()
        said = f"for target {target} ({g.inspection}): {g.readiness.status}"
        if failed:  # a warning on the job: replication itself went well
            fixes = "; ".join(f"{r.name}: {r.detail} (fix: {r.fix})" for r in failed)
            raise InvalidState(f"{said}; {fixes}")
        warned = g.warnings()
        return said + ("; " + "; ".join(f"{r.name}: {r.detail}" for r in warned) if warned else "")

    steps = [Step("replicate", "Replicate (a full copy first, then changed blocks)", run)]
    if job.params.get("readiness_target"):
        steps.append(Step("readiness", "Check the first point's readiness for the target", first_readiness,
                          must_succeed=False))
    machine = get_machine(vault, job.machine_name)
    if replicas.keeper_for(vault, machine) is not None:
        # a failed sync leaves the point committed; the copy catches up next time
        steps.append(Step("sync_replica", "Sync the replica on the target", sync_replica, must_succeed=False))
    return steps
