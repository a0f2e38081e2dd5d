"""Running a recovery plan (issue 15): one plan job whose step per group runs the group's
pre-actions, one child test-failover job per machine, then its post-actions and manual
actions (the job waits until an operator confirms each).

The plan is copied into the job's parameters when the job is made, so a resumed job runs
the steps it was made with even if the plan changed since. Each child job's id is saved in
the plan job's outputs before the child runs, so a plan job resumed after a crash continues
a cut child and leaves a finished one alone: no machine fails over twice. The machines of a
group run at once (one thread per child job), and every one that fails is named."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from rehost.errors import InvalidState, RehostError
from rehost.jobs.models import JobRow
from rehost.jobs.runner import DONE_STATES, Step, StepContext, create_job, get_job, plan, run_job
from rehost.vault import failover, plans
from rehost.vault.plan_actions import run_script
from rehost.vault.vault import Vault

TEST_FAILOVER = "plan-test-failover"
TEST_CLEANUP = "plan-test-cleanup"
CONFIRM_POLL_S = 0.5


class PlanStepFailed(RehostError):
    """A machine or an action of a group failed; the message names which and why."""


def start(vault: Vault, kind: str, name: str) -> JobRow:
    """Make a plan job from the plan as it is now (refused for an empty plan)."""
    p = plans.show(vault, name)
    if not p.machines:
        raise InvalidState(f"plan {name!r} has no machines: rehost plan add {name} MACHINE --group 1")
    return create_job(vault, kind, None, name, {"plan": name, "groups": p.to_json()["groups"]})


def _context(ctx: StepContext) -> dict[str, Any]:
    """What scripts are told: each machine that has a child job so far, with its target,
    placement and point (from the child job's outputs)."""
    machines = []
    for machine, job_id in ctx.outputs.get("children", {}).items():
        child = get_job(ctx.vault, job_id)
        machines.append({"name": machine, "job": job_id, "state": child.state,
                         "target": child.params.get("target"), "vm": child.outputs.get("vm"),
                         "placement": child.outputs.get("placement"), "point": child.outputs.get("point")})
    return {"plan": ctx.params["plan"], "machines": machines}


def _child_job(ctx: StepContext, machine: str, kind: str) -> str | None:
    """The machine's child job: made and recorded now (before it runs: a resumed plan job
    finds it), or the one recorded before; None when that one already succeeded."""
    children: dict[str, str] = dict(ctx.outputs.get("children", {}))
    job_id = children.get(machine)
    if job_id is not None and get_job(ctx.vault, job_id).state in DONE_STATES:
        return None
    if job_id is None:
        job_id = failover.start_job(ctx.vault, kind, machine).id
        children[machine] = job_id
        ctx.save_outputs(children=children)
    return job_id


def _run_child(vault: Vault, machine: str, kind: str, job_id: str) -> str:
    """Run (or continue) a child job; raise naming the machine, the job and its failed step."""
    child = run_job(vault, job_id)
    if child.state != "succeeded":
        failed = next((s for s in child.steps if s.state == "failed"), None)
        where = f"at step {failed.title!r}" if failed else f"({child.state})"
        raise PlanStepFailed(f"machine {machine}: {kind} job {job_id} failed {where}: {child.error}")
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
            select(JobRow).where(JobRow.kind == TEST_FAILOVER, JobRow.machine_name == name,
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

        if kind == TEST_FAILOVER:
            actions("pre")
        lines.extend(_run_machines(ctx, list(group["machines"]), child_kind[kind]))
        if kind == TEST_FAILOVER:
            actions("post")
            actions("manual")
        else:
            actions("cleanup")
        return "\n".join(lines)

    return run


child_kind = {TEST_FAILOVER: "test-failover", TEST_CLEANUP: "test-cleanup"}


@plan(TEST_FAILOVER)
def _test_failover_plan(vault: Vault, job: JobRow) -> list[Step]:
    return [Step(f"group_{g['group']}", f"Group {g['group']}: {', '.join(g['machines']) or 'actions'}",
                 _group_step(g, TEST_FAILOVER))
            for g in job.params["groups"]]


@plan(TEST_CLEANUP)
def _test_cleanup_plan(vault: Vault, job: JobRow) -> list[Step]:
    """Cleanup goes the other way: the last group's machines first."""
    return [Step(f"group_{g['group']}", f"Clean up group {g['group']}", _group_step(g, TEST_CLEANUP))
            for g in reversed(job.params["groups"])]

