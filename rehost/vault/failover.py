"""Test failover, failover, cleanup and complete migration, as jobs of named steps.

Every step is safe to run twice: a job resumed after a kill -9 re-runs the step that was cut
short and finds what it had already made (servers, overlays, a running machine).
"""

from __future__ import annotations

from typing import Any

from rehost.errors import InvalidState, RehostError
from rehost.jobs.models import JobRow
from rehost.jobs.runner import SkipStep, Step, StepContext, create_job, plan, running_jobs
from rehost.repository.prune import prune
from rehost.vault import instant, targets
from rehost.vault.inventory import get_machine, provider_for, set_state
from rehost.vault.protection import find_point, list_points, replicate
from rehost.vault.states import ItemState as S
from rehost.vault.states import require
from rehost.vault.vault import Vault

DEFAULT_BOOT_MARKER = r"REHOST-BOOT-OK[^\r\n]*|login:"
DEFAULT_BOOT_TIMEOUT_S = 300.0


def start_job(vault: Vault, kind: str, name: str, **params: Any) -> JobRow:
    """Check the item's state first (the refusal names the next step), then create the job."""
    machine = get_machine(vault, name)
    op = {"test-failover": "test_failover", "test-cleanup": "test_cleanup", "failover": "failover",
          "complete": "complete"}[kind]
    busy = running_jobs(vault, machine.id)
    if busy:
        raise InvalidState(f"{name} has a {busy[0].kind} job running ({busy[0].id}); wait for it")
    require(op, machine.state, name, machine.state_reason)
    if kind in ("test-failover", "failover"):
        target = targets.target_of(vault, machine, params.get("target"))
        params["target"] = target.name
        if not list_points(vault, name):
            raise InvalidState(f"cannot {op.replace('_', ' ')} {name}: it has no recovery point; "
                               f"run rehost replicate {name}")
        if params.get("point", "latest") not in ("latest", "latest-processed"):
            find_point(vault, name, params["point"])  # refuse a bad point before any job exists
    return create_job(vault, kind, machine.id, name, params)


# -- shared steps -------------------------------------------------------------------------------


def _verify_target(ctx: StepContext) -> str:
    machine = get_machine(ctx.vault, ctx.job.machine_name)
    needed = sum(d.size for d in machine.disks) // 4  # overlays grow with the data, not the disk
    report = targets.verify_target(ctx.vault, ctx.params["target"], needed)
    if not report.ok:
        raise InvalidState(f"target {ctx.params['target']} failed verification: {report.failures()}")
    return "; ".join(f"{c.name}: {c.detail}" for c in report.checks)


def _create_machine(ctx: StepContext) -> str:
    vault, vm = ctx.vault, ctx.outputs["vm"]
    machine = get_machine(vault, ctx.job.machine_name)
    point = vault.repo.load_point_exact(ctx.outputs["point"])
    disks = instant.start_point_servers(vault, machine, point, vm)
    target = targets.provider(targets.get_target(vault, ctx.params["target"]))
    paths = target.create_disks(vm, disks)
    return f"{len(paths)} disk(s) served from point {point.short_id} (instant recovery) in {paths[0].parent}"


def _start(network: str | None) -> Any:
    """Start on ``network``, or (None) on the network the machine's network map names."""

    def run(ctx: StepContext) -> str:
        target = targets.provider(targets.get_target(ctx.vault, ctx.params["target"]))
        net = network or get_machine(ctx.vault, ctx.job.machine_name).network_map.get("default", "production")
        info = target.start(ctx.outputs["vm"], net)  # type: ignore[arg-type]
        ctx.save_outputs(placement=info)
        return f"{info['vm']} running (pid {info['pid']}) on the {net} network"

    return run


def _verify_boot(ctx: StepContext) -> str:
    target = targets.provider(targets.get_target(ctx.vault, ctx.params["target"]))
    line = target.wait_for_console(ctx.outputs["vm"], ctx.params.get("boot_marker", DEFAULT_BOOT_MARKER),
                                   float(ctx.params.get("boot_timeout", DEFAULT_BOOT_TIMEOUT_S)))
    ctx.save_outputs(boot_line=line)
    return f"console: {line}"


def _choose_point(ctx: StepContext) -> str:
    spec = ctx.params.get("point", "latest")
    p = find_point(ctx.vault, ctx.job.machine_name, spec)
    ctx.save_outputs(point=p.id)
    return f"point {p.short_id} ({p.time}, {p.consistency.value})"


# -- test failover -------------------------------------------------------------------------------


@plan("test-failover")
def _test_failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    def prerequisites(ctx: StepContext) -> str:
        ctx.save_outputs(vm=f"{ctx.job.machine_name}-test")
        detail = _verify_target(ctx)
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        set_state(ctx.vault, machine, S.TEST_FAILOVER, f"test failover job {ctx.job.id}")
        return detail

    return [
        Step("prerequisites", "Check prerequisites", prerequisites),
        Step("choose_point", "Choose recovery point", _choose_point),
        Step("create_machine", "Create test machine (copy-on-write overlay)", _create_machine),
        Step("start", "Start test machine on the isolated network", _start("isolated")),
        Step("verify_boot", "Verify boot", _verify_boot),
    ]


@plan("test-cleanup")
def _test_cleanup_plan(vault: Vault, job: JobRow) -> list[Step]:
    vm = f"{job.machine_name}-test"

    def remove_machine(ctx: StepContext) -> str:
        for t in targets.list_targets(ctx.vault):
            target = targets.provider(t)
            if target.exists(vm):
                target.remove(vm)
        instant.stop_point_servers(ctx.vault, vm)
        return f"test machine {vm} and its disks removed"

    def back_to_protected(ctx: StepContext) -> str:
        set_state(ctx.vault, get_machine(ctx.vault, ctx.job.machine_name), S.PROTECTED, "")
        return "replication continues; recovery points untouched"

    return [Step("remove_machine", "Remove test machine", remove_machine),
            Step("finish", "Mark test failover complete", back_to_protected)]


# -- failover --------------------------------------------------------------------------------------


@plan("failover")
def _failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    def prerequisites(ctx: StepContext) -> str:
        ctx.save_outputs(vm=ctx.job.machine_name)
        return _verify_target(ctx)

    def shutdown_source(ctx: StepContext) -> str:
        if not ctx.params.get("shutdown_source"):
            raise SkipStep("not asked (--shutdown-source)")
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        source = provider_for(machine, ctx.vault)
        why_not = source.can_shutdown(machine)
        if why_not:
            raise SkipStep(why_not)
        try:
            result = source.shutdown(machine, float(ctx.params.get("shutdown_timeout", 120)))
        except RehostError as e:
            # Recorded (this step fails, the job goes on); the final sync cannot reach it either.
            ctx.save_outputs(source_unreachable=str(e))
            raise
        ctx.save_outputs(source_stopped=True)
        return result

    def final_sync(ctx: StepContext) -> str:
        if ctx.params.get("point", "latest") != "latest":
            raise SkipStep(f"point {ctx.params.get('point')} chosen: no final sync")
        if ctx.outputs.get("source_unreachable"):
            raise SkipStep("the source could not be reached to shut it down: failing over from the "
                           "latest replicated point")
        result = replicate(ctx.vault, ctx.job.machine_name,
                           lambda done, total: ctx.progress(done, total))
        detail = f"point {result.point.short_id}: {result.changed_bytes} changed bytes shipped"
        if ctx.outputs.get("source_stopped"):  # the source was kept readable for this sync
            machine = get_machine(ctx.vault, ctx.job.machine_name)
            released = provider_for(machine, ctx.vault).release(machine)
            detail += f"; {released}" if released else ""
        return detail

    def stop_replication(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        set_state(ctx.vault, machine, S.FAILOVER_IN_PROGRESS,
                  f"failover job {ctx.job.id}; if it stopped: rehost job resume {ctx.job.id}")
        return "replication stopped; from here the failover cannot be cancelled"

    def hydrate(ctx: StepContext) -> str:
        vm = ctx.outputs["vm"]
        target = targets.provider(targets.get_target(ctx.vault, ctx.params["target"]))
        target.hydrate(vm, ctx.progress)
        instant.stop_point_servers(ctx.vault, vm)
        return "disks copied to the target; the machine no longer depends on the repository"

    def finish(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        placement = {**ctx.outputs.get("placement", {}), "target_name": ctx.params["target"],
                     "point": ctx.outputs["point"]}
        with ctx.vault.session() as s, s.begin():
            from rehost.vault.models import MachineRow

            row = s.get(MachineRow, machine.id)
            assert row is not None
            row.placement = placement
        set_state(ctx.vault, machine, S.FAILED_OVER, f"runs on target {ctx.params['target']}")
        return f"{machine.name} runs on {ctx.params['target']} ({placement.get('dir')})"

    return [
        Step("prerequisites", "Check prerequisites", prerequisites),
        Step("shutdown_source", "Shut down source machine", shutdown_source, must_succeed=False),
        Step("final_sync", "Final sync", final_sync),
        Step("choose_point", "Choose recovery point", _choose_point),
        Step("stop_replication", "Stop replication", stop_replication, point_of_no_return=True),
        Step("create_machine", "Create machine on target", _create_machine),
        Step("start", "Start machine on the mapped network", _start(None)),
        Step("verify_boot", "Verify boot", _verify_boot),
        Step("hydrate", "Copy disks to target while running", hydrate),
        Step("finish", "Record placement", finish),
    ]


# -- complete migration ----------------------------------------------------------------------------


@plan("complete")
def _complete_plan(vault: Vault, job: JobRow) -> list[Step]:
    def purge(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        with ctx.vault.lock("write"), ctx.vault.lock("data"):
            points = {p.id for p in ctx.vault.repo.list_points(machine.id)}
            report = prune(ctx.vault.repo, points)
        ctx.vault.cache.drop(machine.id)
        note = provider_for(machine, ctx.vault).stop_tracking(machine)
        return f"{report.points_removed} point(s) and {report.packs_removed} pack(s) purged" + (
            f"; {note}" if note else "")

    def finish(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        where = machine.placement.get("target_name")
        set_state(ctx.vault, machine, S.MIGRATION_COMPLETED, f"runs on {where}")
        return "replication stopped for good; the migrated machine and its disks are kept"

    return [Step("purge", "Purge replica data", purge, point_of_no_return=True),
            Step("finish", "Mark migration complete", finish)]


# -- replicate as a job (the portal's "Enable replication" shows the first copy's progress) ------


REPLICATE = "replicate"


def start_replicate_job(vault: Vault, name: str, *, app_consistent: bool = False) -> JobRow:
    """Refuse at once what replicate would refuse (state, a job already running), then queue."""
    machine = get_machine(vault, name)
    busy = running_jobs(vault, machine.id)
    if busy:
        raise InvalidState(f"{name} has a {busy[0].kind} job running ({busy[0].id}); wait for it")
    require("replicate", machine.state, name, machine.state_reason)
    return create_job(vault, REPLICATE, machine.id, name, {"app_consistent": app_consistent})


@plan(REPLICATE)
def _replicate_plan(vault: Vault, job: JobRow) -> list[Step]:
    def run(ctx: StepContext) -> str:
        r = replicate(ctx.vault, ctx.job.machine_name, ctx.progress,
                      app_consistent=bool(ctx.params.get("app_consistent")))
        ctx.save_outputs(point=r.point.id)
        return (f"point {r.point.short_id} ({r.point.consistency.value}): read {r.bytes_read} bytes, "
                f"{r.changed_bytes} changed, stored {r.stats.stored_bytes}")

    return [Step("replicate", "Replicate (a full copy first, then changed blocks)", run)]
