"""Test failover, failover, cleanup and complete migration, as jobs of named steps.

The plans are assembled from the target's capabilities (``rehost.targets.base``), never from
its kind: a target that boots from NBD (the local QEMU host) gets point servers, overlays
and hydration after the start (instant recovery); a target that stages disks (upload-then-
boot, such as Azure) gets each disk of the point copied in before the machine is made.

Both start with a readiness step (``rehost.vault.readiness.gate``): a failing requirement of
the point for the target ends the job before anything is made or the source is shut down,
unless the job was started with a reason to go on (``readiness_forced``, recorded).

Every step is safe to run twice: a job resumed after a kill -9 re-runs the step that was cut
short and finds what it had already made (servers, staged disks, a machine, a running one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rehost.errors import InvalidState, RehostError, UsageError
from rehost.guest.fixups import fixup_for, parse_fixups
from rehost.guest.readiness import evaluate
from rehost.jobs import dispatch, leases
from rehost.jobs.models import JobRow
from rehost.jobs.runner import SkipStep, Step, StepContext, create_job, plan, running_jobs
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.prune import prune
from rehost.targets.base import Capabilities, Peer, Placement, PointDisk, Target
from rehost.units import human
from rehost.vault import fixup, instant, point_records, replicas, targets, verdicts
from rehost.vault import readiness as vault_readiness
from rehost.vault.inventory import get_machine, provider_for, set_state, spec_of
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
    if kind == "complete":
        params.update(verdicts.require_passing(vault, name, params.pop("force_reason", None)))
    if kind in ("test-failover", "failover"):
        params.update(_readiness_force(name, params.pop("readiness_force_reason", None)))
        params["fixups"] = list(parse_fixups(params.get("fixups") or ()))
        row = targets.target_of(vault, machine, params.get("target"))
        params["target"] = row.name
        if kind == "failover":
            targets.require_mapped_networks(machine, row)
        if kind == "test-failover" and targets.provider(row).capabilities.test_network is None:
            raise InvalidState(f"cannot test failover {name}: target {row.name} has no isolated test network")
        if not list_points(vault, name):
            raise InvalidState(f"cannot {op.replace('_', ' ')} {name}: it has no recovery point; "
                               f"run rehost replicate {name}")
        if params.get("point", "latest") not in ("latest", "latest-processed"):
            find_point(vault, name, params["point"])  # refuse a bad point before any job exists
    return create_job(vault, kind, machine.id, name, params, creator=dispatch.creator(vault))


def _readiness_force(name: str, reason: str | None) -> dict[str, Any]:
    """What a (test) failover records when the operator lets it go on past failing readiness
    requirements: the reason, in the job's params; the readiness step's output adds what failed
    (as ``complete --force`` records the reason and the missing verdict)."""
    if reason is None:
        return {}
    if not reason.strip():
        raise UsageError(f"--force-readiness needs --reason TEXT: why {name} may fail over although a "
                         "readiness requirement fails (it is recorded)")
    return {"readiness_forced": {"reason": reason.strip()}}


def _forced_note(ctx: StepContext) -> str:
    """For the item's state reason: a (test) failover that went on past failed requirements."""
    r = ctx.outputs.get("readiness") or {}
    if not r.get("forced"):
        return ""
    return f"; went on although {len(r['failed'])} readiness requirement(s) failed: {r['forced']['reason']}"


# -- readiness: will the point boot on the target? (the first step: nothing is made yet) -------------


def _readiness(test: bool) -> Callable[[StepContext], str]:
    def run(ctx: StepContext) -> str:
        name, spec = ctx.job.machine_name, ctx.params.get("point", "latest")
        g = vault_readiness.gate(ctx.vault, name, target=ctx.params["target"], point=spec)
        record = g.to_json()
        reason = (ctx.params.get("readiness_forced") or {}).get("reason")
        fixing = set(ctx.params.get("fixups") or ())
        # what a fix-up asked for repairs on the copy does not stop the job here: the fix-up
        # step checks the copy again and stops it if the requirement still fails
        left = [r for r in g.failed() if fixup_for(r.name) not in fixing]
        fixed_later = [r for r in g.failed() if fixup_for(r.name) in fixing]
        failed = "; ".join(f"{r.name}: {r.detail}" + (f" (fix: {r.fix}" + _fixup_hint(r.name) + ")" if r.fix
                                                      else "") for r in left)
        if failed and reason:
            record["forced"] = {"reason": reason}
        if fixed_later:
            record["left_to_fixups"] = [r.name for r in fixed_later]
        ctx.save_outputs(readiness=record)
        where = f"point {g.point[:12]} on target {g.target}"
        if failed and not reason:
            again = f"rehost failover {name}{' --test' if test else ''} --force-readiness --reason TEXT"
            raise InvalidState(f"{name} is not ready for target {g.target} ({len(left)} failed "
                               f"requirement(s) of point {g.point[:12]}): {failed}. Fix them, or {again} "
                               "(recorded)")
        passed = sum(r.status == "pass" for r in g.readiness.requirements)
        detail = f"{where}: {g.readiness.status} ({passed} passed"
        detail += f", {len(g.warnings())} warning(s), {len(g.failed())} failed; {g.inspection})"
        if not test and spec == "latest":
            detail += " (the final sync's point adds the last writes; it is not inspected again)"
        warnings = [r for r in g.warnings() if r.name != "inspection"]  # said in the parentheses
        if warnings:
            detail += "; warnings: " + "; ".join(f"{r.name}: {r.detail}" for r in warnings)
        if fixed_later:
            detail += "; left to the fix-ups: " + "; ".join(
                f"{r.name} ({fixup_for(r.name)}): {r.detail}" for r in fixed_later)
        if failed:  # the fixes are in the job's outputs (readiness.failed)
            named = "; ".join(f"{r.name}: {r.detail}" for r in left)
            detail += f"; FORCED past the failed requirement(s) ({named}); reason: {reason}"
        return detail

    return run


def _fixup_hint(requirement: str) -> str:
    name = fixup_for(requirement)
    return f"; or on the copy: --fix-up {name}" if name else ""


def _fix_up(ctx: StepContext) -> str:
    """Apply the fix-ups asked for to overlays of the point, then check the copy again: a
    requirement they were to repair that still fails stops the job (unless forced)."""
    names = list(ctx.params.get("fixups") or ())
    row = targets.get_target(ctx.vault, ctx.params["target"])
    machine = get_machine(ctx.vault, ctx.job.machine_name)
    point = _point(ctx)
    result = fixup.fix_up(ctx.vault, machine, point, ctx.outputs["vm"], row.kind, names)
    after = evaluate(result.after, row.kind)
    still = [r for r in after.failed() if fixup_for(r.name) in names]
    ctx.save_outputs(fixups={**result.to_json(), "readiness_after": after.to_json()})
    done = "; ".join(f"{f.name}: {f.detail}" for f in result.fixups)
    if still and not (ctx.params.get("readiness_forced") or {}).get("reason"):
        named = "; ".join(f"{r.name}: {r.detail}" for r in still)
        instant.stop_point_servers(ctx.vault, ctx.outputs["vm"])  # nothing uses the copy: drop it
        fixup.remove(ctx.vault, ctx.outputs["vm"])
        raise InvalidState(f"the fix-ups did not repair the copy: {named} (fix-ups: {done})")
    return f"{done}; the copy checks {after.status} for {row.kind} targets ({result.seconds:.0f} s)"


def _readiness_steps(job: JobRow, *, test: bool) -> list[Step]:
    """The readiness step, first; not in a job made before there was one (it resumes with the
    steps it was made with, e.g. a failover past its point of no return across an upgrade)."""
    if job.steps and job.steps[0].name != "readiness":
        return []
    return [Step("readiness", "Check readiness for the target", _readiness(test))]


# -- the target's part: shared by test failover and failover ------------------------------------


def _target(ctx: StepContext) -> Target:
    return targets.provider(targets.get_target(ctx.vault, ctx.params["target"]))


def _capabilities(vault: Vault, job: JobRow) -> Capabilities:
    return targets.provider(targets.get_target(vault, job.params["target"])).capabilities


def _placement(ctx: StepContext, target: Target) -> Placement:
    """What create/start returned (persisted), else what the target finds under the name."""
    saved = ctx.outputs.get("placement")
    if saved and "location" in saved:
        return Placement.from_json(saved)
    found = target.find(ctx.outputs["vm"])
    if found is None:
        raise InvalidState(f"{ctx.outputs['vm']} does not exist on target {ctx.params['target']}")
    return found


def _point(ctx: StepContext) -> RecoveryPoint:
    return ctx.vault.repo.load_point_exact(ctx.outputs["point"])


def _verify_target(ctx: StepContext) -> str:
    machine = get_machine(ctx.vault, ctx.job.machine_name)
    needed = sum(d.size for d in machine.disks)
    if _target(ctx).capabilities.boots_from_nbd:
        needed //= 4  # overlays grow with the data, not the disk
    report = targets.verify_target(ctx.vault, ctx.params["target"], needed)
    if not report.ok:
        raise InvalidState(f"target {ctx.params['target']} failed verification: {report.failures()}")
    misfit = targets.misfits(ctx.vault, machine, ctx.params["target"])
    if misfit:
        raise InvalidState(misfit)
    return "; ".join(f"{c.name}: {c.detail}" for c in report.checks)


def _stage_disks(ctx: StepContext) -> str:
    """Copy every disk of the point into the target (zeros are not sent); a disk the target
    already holds from this point is not read again."""
    target, point, vm = _target(ctx), _point(ctx), ctx.outputs["vm"]
    name = ctx.job.machine_name
    total, base = sum(d.size for d in point.disks), 0
    synced = ""
    spec = spec_of(get_machine(ctx.vault, name))
    with leases.reading(ctx.vault, [point.id], "stage disks"):  # prune keeps what is read
        # the point may be newer than this process's index (another process's final sync,
        # before this job was resumed): a stale index would call its blobs missing
        ctx.vault.repo.refresh_index()
        if target.capabilities.keeps_replicas:
            machine = get_machine(ctx.vault, name)
            if not replicas.ready_for(ctx.vault, machine, point, ctx.params["target"]):
                # only what changed since the last sync (the final sync's delta) is written
                r = replicas.sync(ctx.vault, machine, point, ctx.progress, target=ctx.params["target"])
                if r is not None:
                    ctx.save_outputs(replica_sync=r.to_json())
                    synced = f"; replica synced to it first: {human(r.bytes_written)} written"
        fixed = fixup.fixed_disks(ctx.vault, point, vm)
        for d in point.disks:
            def progress(done: int, _size: int, base: int = base) -> None:
                ctx.progress(base + done, total)

            if fixed is not None:  # the fixed copy, as a disk of its own (not the target's replica)
                target.stage_disk(vm, PointDisk(d.index, d.size, fixup.staged_point(point)),
                                  fixup.staged_data(fixed[d.index]), progress, spec=spec)
            else:
                target.stage_disk(vm, PointDisk(d.index, d.size, point.id, machine=name),
                                  ctx.vault.repo.iter_disk(point, d.index), progress, spec=spec)
            base += d.size
    if fixed is not None:
        instant.stop_point_servers(ctx.vault, vm)
        fixup.remove(ctx.vault, vm)
        synced += "; the fixed-up copy was staged, not the point"
    ctx.progress(total, total)
    return f"{len(point.disks)} disk(s) of point {point.short_id} staged on {ctx.params['target']}{synced}"


def _create_machine(ctx: StepContext) -> str:
    vault, vm, target = ctx.vault, ctx.outputs["vm"], _target(ctx)
    machine = get_machine(vault, ctx.job.machine_name)
    point = _point(ctx)
    fixed = ctx.params.get("fixups")
    if target.capabilities.boots_from_nbd:
        disks = instant.start_point_servers(vault, machine, point, vm)
        how = "served from point {} (instant recovery)"
        if fixed:  # the fix-up overlays, whose backing files are these exports
            overlays = fixup.fixed_disks(vault, point, vm)
            if overlays is None:
                raise InvalidState(f"the fix-ups of {vm} are gone; run the job again (rehost failover)")
            disks, how = overlays, "served from point {} with the fix-ups on overlays (instant recovery)"
    else:
        staged = fixup.staged_point(point) if fixed else point.id
        disks = [PointDisk(d.index, d.size, staged, machine=machine.name) for d in point.disks]
        how = "staged from point {}" + (" with the fix-ups" if fixed else "")
    placement = target.create(spec_of(machine), vm, disks)
    ctx.save_outputs(placement=placement.to_json())
    return f"{len(disks)} disk(s) {how.format(point.short_id)} in {placement.location}"


def _start(test: bool) -> Callable[[StepContext], str]:
    """Start on the target's test network, or on the network the machine's map names."""

    def run(ctx: StepContext) -> str:
        target = _target(ctx)
        if test:
            net = target.capabilities.test_network
            assert net is not None  # start_job refused a target without one
        else:
            net = targets.network_for(target, get_machine(ctx.vault, ctx.job.machine_name))
        ports = verdicts.ports_of(verdicts.list_checks(ctx.vault, ctx.job.machine_name))
        peers = [Peer(**p) for p in ctx.params.get("peers", [])]
        placement = target.start(_placement(ctx, target), net, ports=ports, peers=peers)
        ctx.save_outputs(placement=placement.to_json())
        pid, ip = placement.details.get("pid"), placement.details.get("private_ip")
        note = placement.details.get("ip_note")  # e.g. the source's IP could not be kept
        return (f"{placement.vm} running" + (f" (pid {pid})" if pid else "") + f" on the {net} network"
                + (f", address {ip}" if ip else "") + (f"; {note}" if note else ""))

    return run


def _verify_boot(ctx: StepContext) -> str:
    target = _target(ctx)
    line = target.boot_verdict(_placement(ctx, target), ctx.params.get("boot_marker", DEFAULT_BOOT_MARKER),
                               float(ctx.params.get("boot_timeout", DEFAULT_BOOT_TIMEOUT_S)))
    ctx.save_outputs(boot_line=line)
    source = target.capabilities.verdict
    return f"{'console' if source == 'serial-console' else source}: {line}"


def _run_checks(ctx: StepContext) -> str:
    """The machine's checks against it where it runs; the verdict is kept in the job."""
    target = _target(ctx)
    checks = verdicts.list_checks(ctx.vault, ctx.job.machine_name)
    source = target.capabilities.verdict
    boot = f"{'console' if source == 'serial-console' else source}: {ctx.outputs.get('boot_line', '')}"
    v = verdicts.run_checks(ctx.job.machine_name, checks, target, _placement(ctx, target), boot)
    ctx.save_outputs(verdict=v)
    if not v["ok"]:
        raise InvalidState(f"verdict failed: {verdicts.failures(v)}")
    names = ", ".join(c.name for c in checks)
    return f"verdict passed: boot ({boot})" + (f" and {len(checks)} check(s): {names}" if checks
                                               else "; no other checks")


def _hydrate(ctx: StepContext) -> str:
    target = _target(ctx)
    target.hydrate(_placement(ctx, target), ctx.progress)
    instant.stop_point_servers(ctx.vault, ctx.outputs["vm"])
    fixup.remove(ctx.vault, ctx.outputs["vm"])
    return "disks copied to the target; the machine no longer depends on the repository"


def _materialize(caps: Capabilities, job: JobRow, *, test: bool) -> list[Step]:
    """Make the machine on the target from the chosen point (fixed up, if asked), start it,
    see it boot."""
    what = "test machine" if test else "machine"
    steps = []
    names = job.params.get("fixups") or []
    if names:
        steps.append(Step("fix_up", f"Fix up the copy ({', '.join(names)})", _fix_up))
    if caps.stages_disks:
        steps.append(Step("stage_disks", "Copy the point's disks to the target", _stage_disks))
    create = "Create test machine (copy-on-write overlay)" if test and caps.boots_from_nbd \
        else f"Create {what} on target"
    steps += [
        Step("create_machine", create, _create_machine),
        Step("start", "Start test machine on the isolated network" if test
             else "Start machine on the mapped network", _start(test)),
        Step("verify_boot", "Verify boot", _verify_boot),
    ]
    if caps.boots_from_nbd and not test:
        steps.append(Step("hydrate", "Copy disks to target while running", _hydrate))
    return steps


def _choose_point(ctx: StepContext) -> str:
    """The point the readiness step evaluated, unless a final sync has made a newer one."""
    spec = ctx.params.get("point", "latest")
    checked = (ctx.outputs.get("readiness") or {}).get("point")
    if checked and not (ctx.job.kind == "failover" and spec == "latest"):
        spec = checked
    p = find_point(ctx.vault, ctx.job.machine_name, spec)
    ctx.save_outputs(point=p.id)
    return f"point {p.short_id} ({p.time}, {p.consistency.value})"


# -- test failover -------------------------------------------------------------------------------


def vm_for_test(machine_name: str) -> str:
    """The test machine's name on the target (cleanup finds it by this name alone)."""
    return f"{machine_name}-test"


@plan("test-failover")
def _test_failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    def prerequisites(ctx: StepContext) -> str:
        ctx.save_outputs(vm=vm_for_test(ctx.job.machine_name))
        detail = _verify_target(ctx)
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        set_state(ctx.vault, machine, S.TEST_FAILOVER, f"test failover job {ctx.job.id}{_forced_note(ctx)}")
        return detail

    return [
        *_readiness_steps(job, test=True),
        Step("prerequisites", "Check prerequisites", prerequisites),
        Step("choose_point", "Choose recovery point", _choose_point),
        *_materialize(_capabilities(vault, job), job, test=True),
        Step("checks", "Check the machine's services (verdict)", _run_checks),
    ]


@plan("test-cleanup")
def _test_cleanup_plan(vault: Vault, job: JobRow) -> list[Step]:
    vm = vm_for_test(job.machine_name)

    def remove_machine(ctx: StepContext) -> str:
        """On every target: the test job may have been cut before it recorded anything."""
        for row in targets.list_targets(ctx.vault):
            target = targets.provider(row)
            placement = target.find(vm)
            if placement is not None:
                target.remove(placement)
        instant.stop_point_servers(ctx.vault, vm)
        fixup.remove(ctx.vault, vm)
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
        why_not = source.can_shutdown(spec_of(machine))
        if why_not:
            raise SkipStep(why_not)
        try:
            result = source.shutdown(spec_of(machine), float(ctx.params.get("shutdown_timeout", 120)))
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
            released = provider_for(machine, ctx.vault).release(spec_of(machine))
            detail += f"; {released}" if released else ""
        return detail

    def stop_replication(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        set_state(ctx.vault, machine, S.FAILOVER_IN_PROGRESS,
                  f"failover job {ctx.job.id}; if it stopped: rehost job resume {ctx.job.id}")
        return "replication stopped; from here the failover cannot be cancelled"

    def finish(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        placement = _placement(ctx, _target(ctx))
        record = {**placement.to_json(), "dir": placement.location, "target_name": ctx.params["target"],
                  "point": ctx.outputs["point"]}
        with ctx.vault.session() as s, s.begin():
            from rehost.vault.models import MachineRow

            row = s.get(MachineRow, machine.id)
            assert row is not None
            row.placement = record
        set_state(ctx.vault, machine, S.FAILED_OVER,
                  f"runs on target {ctx.params['target']}{_forced_note(ctx)}")
        return f"{machine.name} runs on {ctx.params['target']} ({placement.location})"

    return [
        *_readiness_steps(job, test=False),
        Step("prerequisites", "Check prerequisites", prerequisites),
        Step("shutdown_source", "Shut down source machine", shutdown_source, must_succeed=False),
        Step("final_sync", "Final sync", final_sync),
        Step("choose_point", "Choose recovery point", _choose_point),
        Step("stop_replication", "Stop replication", stop_replication, point_of_no_return=True),
        *_materialize(_capabilities(vault, job), job, test=False),
        Step("finish", "Record placement", finish),
        Step("checks", "Check the machine's services (verdict)", _run_checks),
    ]


# -- complete migration ----------------------------------------------------------------------------


@plan("complete")
def _complete_plan(vault: Vault, job: JobRow) -> list[Step]:
    def purge(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        with leases.pruning(ctx.vault), point_records.changing(ctx.vault, [machine.id]):
            points = {p.id for p in ctx.vault.repo.list_points(machine.id)}
            # other machines' uncompressed initial copies are left to rehost prune or serve
            report = prune(ctx.vault.repo, points, reading=leases.points_being_read(ctx.vault), compress=0)
        ctx.vault.cache.drop(machine.id)
        note = provider_for(machine, ctx.vault).stop_tracking(spec_of(machine))
        return f"{report.points_removed} point(s) and {report.packs_removed} pack(s) purged" + (
            f"; {note}" if note else "")

    def finish(ctx: StepContext) -> str:
        machine = get_machine(ctx.vault, ctx.job.machine_name)
        where = machine.placement.get("target_name")
        forced = ctx.params.get("forced")
        set_state(ctx.vault, machine, S.MIGRATION_COMPLETED, f"runs on {where}" + (
            f"; completed without a passing verdict: {forced['reason']}" if forced else ""))
        return "replication stopped for good; the migrated machine and its disks are kept" + (
            f" (forced without a passing verdict ({forced['why']}); reason: {forced['reason']})"
            if forced else f" (verdict of job {ctx.params.get('verdict_job')} passed)")

    def drop_replicas(ctx: StepContext) -> str:
        note = replicas.drop(ctx.vault, get_machine(ctx.vault, ctx.job.machine_name))
        if note is None:
            raise SkipStep("the target keeps no replica")
        return note

    steps = [Step("purge", "Purge replica data", purge, point_of_no_return=True)]
    machine = get_machine(vault, job.machine_name)
    if replicas.keeper_for(vault, machine, machine.placement.get("target_name")):
        steps.append(Step("drop_replicas", "Delete the replica disks on the target", drop_replicas))
    return [*steps, Step("finish", "Mark migration complete", finish)]
