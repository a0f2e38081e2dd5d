"""Running a recovery plan (issue 15): one plan job whose step per group runs the group's
pre-actions, one child job per machine (test failover, failover, cleanup or complete), then
its post-actions and manual actions (the job waits until an operator confirms each).

Consistency across machines: a test failover at ``latest`` takes, for each machine, its
newest point not newer than one instant (the plan job's creation, or ``--at``), so the
machines of an application are seen at about the same moment; the job records each point
and the spread between the oldest and the newest. A real failover (``--shutdown-source``)
shuts down and final-syncs each group's machines as a single failover does. Machines of later
groups reach those of earlier ones through the target (``Peer``) where its network alone
does not carry them, and the plan's verdict gathers every machine's checks.

The plan is copied into the job's parameters when the job is made, so a resumed job runs
the steps it was made with even if the plan changed since. Each child job's id is saved in
the plan job's outputs before the child runs, so a plan job resumed after a crash continues
a cut child and leaves a finished one alone: no machine fails over twice. The machines of a
group run at once (one thread per child job), and every one that fails is named."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from rehost.errors import InvalidState, NotFound, RehostError, UsageError
from rehost.guest.fixups import parse_fixups
from rehost.jobs.models import JobRow
from rehost.jobs.runner import DONE_STATES, Step, StepContext, create_job, get_job, plan, run_job
from rehost.targets.base import Placement
from rehost.vault import failover, plans, protection, targets, verdicts
from rehost.vault.plan_actions import run_script
from rehost.vault.vault import Vault

TEST_FAILOVER = "plan-test-failover"
TEST_CLEANUP = "plan-test-cleanup"
FAILOVER = "plan-failover"
COMPLETE = "plan-complete"
KINDS = (TEST_FAILOVER, TEST_CLEANUP, FAILOVER, COMPLETE)
CONFIRM_POLL_S = 0.5


class PlanStepFailed(RehostError):
    """A machine or an action of a group failed; the message names which and why."""


def _parse_instant(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {at!r} is not a time: give ISO 8601, e.g. 2026-12-05T10:30:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def consistent_points(vault: Vault, machines: list[str], at: datetime) -> dict[str, Any]:
    """Each machine's newest point not newer than ``at``, and the spread between them."""
    chosen: dict[str, dict[str, str]] = {}
    stamps: list[datetime] = []
    for m in machines:
        fitting = [p for p in protection.point_list(vault, m) if protection.point_time(p) <= at]
        if not fitting:
            raise NotFound(f"{m} has no recovery point at or before {at.isoformat(timespec='seconds')}"
                           f" (rehost points {m})")
        chosen[m] = {"id": fitting[-1].id, "time": fitting[-1].time}
        stamps.append(protection.point_time(fitting[-1]))
    spread = (max(stamps) - min(stamps)).total_seconds()
    return {"at": at.isoformat(timespec="seconds"), "points": chosen, "spread_s": round(spread, 3)}


def running_plan_job(vault: Vault, name: str) -> JobRow | None:
    with vault.session() as s:
        return s.scalar(select(JobRow).where(JobRow.kind.in_(KINDS), JobRow.machine_name == name,
                                             JobRow.state.in_(("queued", "running")))
                        .order_by(JobRow.created_at.desc()).limit(1))


def start(vault: Vault, kind: str, name: str, *, point: str = "latest", at: str | None = None,
          shutdown_source: bool = False, force_reason: str | None = None,
          readiness_force_reason: str | None = None, fixups: Sequence[str] = ()) -> JobRow:
    """Make a plan job from the plan as it is now. Refused for an empty plan, while another
    job of the plan runs, and (complete) while a machine's verdict did not pass, unless forced
    with a reason: the refusal names every such machine. A (test) failover's readiness
    options (a reason to go on past failed requirements, fix-ups on the copies) are handed to
    every machine's job."""
    p = plans.show(vault, name)
    if not p.machines:
        raise InvalidState(f"plan {name!r} has no machines: rehost plan add {name} MACHINE --group 1")
    busy = running_plan_job(vault, name)
    if busy is not None:
        raise InvalidState(f"plan {name!r} has a {busy.kind} job {busy.state} ({busy.id}); "
                           f"wait for it or rehost job resume {busy.id}")
    params: dict[str, Any] = {"plan": name, "groups": p.to_json()["groups"]}
    if kind in (TEST_FAILOVER, FAILOVER):
        params["fixups"] = list(parse_fixups(fixups))
        if readiness_force_reason is not None:
            if not readiness_force_reason.strip():
                raise UsageError(f"--force-readiness needs --reason TEXT: why the machines of plan {name} "
                                 "may fail over although a readiness requirement fails (it is recorded)")
            params["readiness_force_reason"] = readiness_force_reason.strip()
    elif fixups or readiness_force_reason is not None:
        raise UsageError("--fix-up and --force-readiness go with a plan's (test) failover")
    if kind == TEST_FAILOVER:
        if point != "latest":
            raise UsageError("a plan's test failover takes --point latest (with --at TIME): a point id "
                             "is one machine's")
        params["consistency"] = consistent_points(vault, p.machines, _parse_instant(at))
    elif kind == FAILOVER:
        params["shutdown_source"] = shutdown_source
    elif kind == COMPLETE:
        refusals, records = [], {}
        for m in p.machines:
            try:
                records[m] = verdicts.require_passing(vault, m, force_reason)
            except InvalidState as e:
                refusals.append(str(e).split(". Fix it")[0].removeprefix("cannot complete "))
        if refusals:
            raise InvalidState(f"cannot complete plan {name}: " + "; ".join(refusals)
                               + f". Or: rehost plan complete {name} --force --reason TEXT (recorded)")
        params["verdicts"] = records
        if force_reason is not None:
            params["force_reason"] = force_reason
    return create_job(vault, kind, None, name, params)


def _context(ctx: StepContext) -> dict[str, Any]:
    """What scripts are told: each machine that has a child job so far, with its target,
    placement and point (from the child job's outputs)."""
    machines = []
    for machine, job_id in ctx.outputs.get("children", {}).items():
        child = get_job(ctx.vault, job_id)
        machines.append({"name": machine, "job": job_id, "state": child.state,
                         "target": child.params.get("target"), "vm": child.outputs.get("vm"),
                         "placement": child.outputs.get("placement"), "point": child.outputs.get("point"),
                         "endpoints": {str(p): list(e) for p, e in
                                       _endpoints(ctx.vault, machine, child).items()}})
    return {"plan": ctx.params["plan"], "machines": machines}


def _endpoints(vault: Vault, machine: str, child: JobRow) -> dict[int, tuple[str, int]]:
    """Where this host reaches the ports of the machine's checks, as its target says."""
    placement = child.outputs.get("placement")
    if not placement or not child.params.get("target"):
        return {}
    target = targets.provider(targets.get_target(vault, child.params["target"]))
    where = Placement.from_json(placement)
    found = {}
    for port in verdicts.ports_of(verdicts.list_checks(vault, machine)):
        end = target.endpoint(where, port)
        if end is not None:
            found[port] = end
    return found


def _peers(ctx: StepContext) -> list[dict[str, Any]]:
    """Every checked port of the machines already started by this plan, as the target
    reaches it: a later group's machine is started able to reach them."""
    return [{"name": machine, "port": port, "host": host, "host_port": host_port}
            for machine, job_id in ctx.outputs.get("children", {}).items()
            for port, (host, host_port) in _endpoints(ctx.vault, machine, get_job(ctx.vault, job_id)).items()]


def _child_params(ctx: StepContext, machine: str, kind: str) -> dict[str, Any]:
    readiness: dict[str, Any] = {"fixups": list(ctx.params.get("fixups") or ())}
    if ctx.params.get("readiness_force_reason"):
        readiness["readiness_force_reason"] = ctx.params["readiness_force_reason"]
    if kind == "test-failover":
        point = ctx.params.get("consistency", {}).get("points", {}).get(machine, {}).get("id")
        return {"peers": _peers(ctx), **({"point": point} if point else {}), **readiness}
    if kind == "failover":
        return {"peers": _peers(ctx), "shutdown_source": bool(ctx.params.get("shutdown_source")), **readiness}
    if kind == "complete" and "force_reason" in ctx.params:
        return {"force_reason": ctx.params["force_reason"]}
    return {}


def _child_job(ctx: StepContext, machine: str, kind: str) -> str | None:
    """The machine's child job: made and recorded now (before it runs: a resumed plan job
    finds it), or the one recorded before; None when that one already succeeded."""
    children: dict[str, str] = dict(ctx.outputs.get("children", {}))
    job_id = children.get(machine)
    if job_id is not None and get_job(ctx.vault, job_id).state in DONE_STATES:
        return None
    if job_id is None:
        job_id = failover.start_job(ctx.vault, kind, machine, parent=ctx.job.id,
                                    **_child_params(ctx, machine, kind)).id
        children[machine] = job_id
        ctx.save_outputs(children=children)
    return job_id


def _run_child(vault: Vault, machine: str, kind: str, job_id: str) -> str:
    """Run (or continue) a child job; raise naming the machine, the job and its failed step."""
    child = run_job(vault, job_id)
    if child.state != "succeeded":
        failed = next((s for s in child.steps if s.state == "failed"), None)
        where = f"at step {failed.title!r}" if failed else f"({child.state})"
        error = (child.error or "").removeprefix(f"{failed.title}: " if failed else "")
        raise PlanStepFailed(f"machine {machine}: {kind} job {job_id} failed {where}: {error}")
    return f"{machine}: job {job_id} succeeded"


def _run_machines(ctx: StepContext, machines: list[str], kind: str) -> list[str]:
    """The group's machines at once, one thread per child job; every failure is named."""
    lines: list[str] = []
    todo: dict[str, str] = {}
    for m in machines:
        job_id = _child_job(ctx, m, kind)
        if job_id is None:
            lines.append(f"{m}: job {ctx.outputs['children'][m]} had already succeeded")
        else:
            todo[m] = job_id
    failures: list[str] = []
    with ThreadPoolExecutor(max(1, len(todo)), thread_name_prefix="rehost-plan") as pool:
        futures = {m: pool.submit(_run_child, ctx.vault, m, kind, job_id) for m, job_id in todo.items()}
        for m, future in futures.items():
            try:
                lines.append(future.result())
            except RehostError as e:
                failures.append(str(e))
            except Exception as e:  # a child's crash is that machine's failure, named
                failures.append(f"machine {m}: {kind} job {todo[m]}: {type(e).__name__}: {e}")
    if failures:
        raise PlanStepFailed("; ".join(failures))
    return lines


def _wait_for_confirmation(ctx: StepContext, key: str, text: str) -> str:
    """Hold the step until ``confirm`` records KEY; the step's detail and the job's
    ``waiting`` output say what the operator is asked to do. Only ``confirm`` writes while
    the step waits, so re-reading the outputs afterwards loses nothing."""
    if key in ctx.outputs.get("confirmed", []):
        return f"confirmed: {text}"
    ctx.save_outputs(waiting={"key": key, "text": text})
    ctx.step.detail = f"waiting for an operator to confirm: {text} (rehost plan confirm {ctx.params['plan']})"
    ctx.progress(0, 1)
    while True:
        fresh = get_job(ctx.vault, ctx.job.id)
        if fresh.state == "cancelled":
            raise PlanStepFailed(f"cancelled while waiting for the confirmation of: {text}")
        outputs = dict(fresh.outputs)
        if key in outputs.get("confirmed", []):
            ctx.outputs = outputs
            ctx.job.outputs = dict(outputs)
            return f"confirmed: {text}"
        time.sleep(CONFIRM_POLL_S)


def confirm(vault: Vault, name: str) -> str:
    """Confirm the manual action the plan's running job waits for; returns its text."""
    with vault.session() as s, s.begin():
        job = s.scalar(
            select(JobRow).where(JobRow.kind.in_(KINDS), JobRow.machine_name == name,
                                 JobRow.state == "running")
            .order_by(JobRow.created_at.desc())
        )
        waiting = (job.outputs or {}).get("waiting") if job is not None else None
        if job is None or not waiting:
            raise InvalidState(f"plan {name!r} has no job waiting for a confirmation")
        outputs = dict(job.outputs)
        outputs["confirmed"] = [*outputs.get("confirmed", []), waiting["key"]]
        outputs.pop("waiting")
        job.outputs = outputs
        return str(waiting["text"])


def _group_step(group: dict[str, Any], kind: str) -> Callable[[StepContext], str]:
    def run(ctx: StepContext) -> str:
        number = int(group["group"])
        lines: list[str] = []

        def actions(which: str) -> None:
            for i, a in enumerate(group["actions"]):
                if a["kind"] != which:
                    continue
                if which == "manual":
                    lines.append(_wait_for_confirmation(ctx, f"{number}:{i}", a["text"]))
                    continue
                r = run_script(a["script"], plan=ctx.params["plan"], group=number,
                               context=_context(ctx), timeout_s=a["timeout_s"])
                lines.append(f"{which} {a['script']} ({r.seconds:.1f}s):\n{r.output.rstrip()}")

        starts = kind in (TEST_FAILOVER, FAILOVER)
        if starts:
            actions("pre")
        try:
            lines.extend(_run_machines(ctx, list(group["machines"]), child_kind[kind]))
        finally:
            if starts:
                _gather_verdicts(ctx)
        if starts:
            actions("post")
            actions("manual")
        elif kind == TEST_CLEANUP:
            actions("cleanup")
        return "\n".join(lines)

    return run


child_kind = {TEST_FAILOVER: "test-failover", TEST_CLEANUP: "test-cleanup", FAILOVER: "failover",
              COMPLETE: "complete"}


def _gather_verdicts(ctx: StepContext) -> None:
    """The plan's verdict: every child's checks so far (a failed one's too, so the plan says
    which machine and which check)."""
    checks: list[dict[str, Any]] = []
    for machine, job_id in ctx.outputs.get("children", {}).items():
        v = get_job(ctx.vault, job_id).outputs.get("verdict")
        for c in (v or {}).get("checks", []):
            checks.append({**c, "machine": c.get("machine") or machine})
    ctx.save_outputs(verdict={"ok": bool(checks) and all(c["ok"] for c in checks), "checks": checks,
                              "at": datetime.now(UTC).isoformat(timespec="seconds")})


def _consistency_step(ctx: StepContext) -> str:
    c = ctx.params["consistency"]
    lines = [f"points at or before {c['at']}; spread {c['spread_s']:g}s between machines"]
    lines += [f"{m}: point {p['id'][:12]} ({p['time']})" for m, p in c["points"].items()]
    return "\n".join(lines)


@plan(TEST_FAILOVER)
def _test_failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    first = [Step("points", "Choose consistent points", _consistency_step)] \
        if "consistency" in job.params else []
    return first + [Step(f"group_{g['group']}", _title(g), _group_step(g, TEST_FAILOVER))
                    for g in job.params["groups"]]


def _title(g: dict[str, Any]) -> str:
    return f"Group {g['group']}: {', '.join(g['machines']) or 'actions'}"


@plan(FAILOVER)
def _failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    """Group after group; each machine's own failover job shuts its source down and syncs
    it last when asked, so a group's machines stop only when their turn comes."""
    return [Step(f"group_{g['group']}", _title(g), _group_step(g, FAILOVER)) for g in job.params["groups"]]


@plan(COMPLETE)
def _complete_plan(vault: Vault, job: JobRow) -> list[Step]:
    return [Step(f"group_{g['group']}", f"Complete group {g['group']}", _group_step(g, COMPLETE))
            for g in job.params["groups"] if g["machines"]]


@plan(TEST_CLEANUP)
def _test_cleanup_plan(vault: Vault, job: JobRow) -> list[Step]:
    """Cleanup goes the other way: the last group's machines first."""
    return [Step(f"group_{g['group']}", f"Clean up group {g['group']}", _group_step(g, TEST_CLEANUP))
            for g in reversed(job.params["groups"])]

