"""rehost plan create | add | remove | action | show | list | delete: recovery plans (issue 15)."""

from __future__ import annotations

import typer

from rehost.cli.context import emit_json, open_vault, out
from rehost.errors import InvalidState, UsageError
from rehost.jobs.models import JobRow
from rehost.jobs.runner import run_job
from rehost.jobs.views import job_dict
from rehost.vault import plan_jobs, plans
from rehost.vault.vault import Vault

plan_app = typer.Typer(
    help="Recovery plans: machines that fail over together, group after group, with actions between.",
    no_args_is_help=True,
)

GROUP = typer.Option(
    ..., "--group", min=1, help="The group (1 starts first; the last group + 1 adds a group)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")


def _print(plan: plans.Plan) -> None:
    out.print(f"plan {plan.name}", highlight=False, markup=False)
    if not plan.groups:
        out.print("  (no groups: rehost plan add NAME MACHINE --group 1)", highlight=False, markup=False)
    for g in plan.groups:
        out.print(f"  group {g.number}: {', '.join(g.machines) or '(no machines)'}",
                  highlight=False, markup=False)
        for a in g.actions:
            what = (f"confirm: {a['text']}" if a["kind"] == "manual"
                    else f"{a['script']} (timeout {a['timeout_s']}s)")
            out.print(f"    {a['kind']:6} {what}", highlight=False, markup=False)


@plan_app.command("create")
def create(ctx: typer.Context, name: str) -> None:
    """Create an empty plan."""
    with open_vault(ctx) as vault:
        plans.create(vault, name)
    out.print(f"created plan {name}", highlight=False)


@plan_app.command("add")
def add(ctx: typer.Context, name: str, machine: str, group: int = GROUP) -> None:
    """Put MACHINE in a group of the plan (the machines of a group start at once)."""
    with open_vault(ctx) as vault:
        plans.add_machine(vault, name, machine, group)
    out.print(f"added {machine} to group {group} of plan {name}", highlight=False)


@plan_app.command("remove")
def remove(ctx: typer.Context, name: str, machine: str) -> None:
    """Take MACHINE out of the plan."""
    with open_vault(ctx) as vault:
        plans.remove_machine(vault, name, machine)
    out.print(f"removed {machine} from plan {name}", highlight=False)


@plan_app.command("action")
def action(
    ctx: typer.Context,
    name: str,
    group: int = GROUP,
    pre: str = typer.Option(
        None, "--pre", metavar="SCRIPT", help="Run SCRIPT before the group's machines start."
    ),
    post: str = typer.Option(None, "--post", metavar="SCRIPT", help="Run SCRIPT after they started."),
    manual: str = typer.Option(
        None, "--manual", metavar="TEXT", help="Wait until an operator confirms TEXT."
    ),
    cleanup: str = typer.Option(
        None, "--cleanup", metavar="SCRIPT", help="Run SCRIPT when a test failover is cleaned up."
    ),
    timeout: str = typer.Option(None, "--timeout", help="Kill a script after this long (default 60s)."),
) -> None:
    """Add an action to a group: a script on this host (--pre/--post, --cleanup after a test),
    or a manual step."""
    choices = (("pre", pre), ("post", post), ("cleanup", cleanup), ("manual", manual))
    given = [(k, v) for k, v in choices if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --pre SCRIPT, --post SCRIPT, --cleanup SCRIPT or --manual TEXT")
    kind, value = given[0]
    if kind == "manual" and timeout is not None:
        raise UsageError("--timeout is for scripts: a manual action waits for its confirmation")
    with open_vault(ctx) as vault:
        plans.add_action(
            vault, name, group, kind,
            script=value if kind != "manual" else None,
            text=value if kind == "manual" else None,
            timeout_s=plans.parse_timeout(timeout),
        )
    out.print(f"added a {kind} action to group {group} of plan {name}", highlight=False)


@plan_app.command("show")
def show(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The plan's groups in the order they start, with their machines and actions."""
    with open_vault(ctx) as vault:
        plan = plans.show(vault, name)
    if as_json:
        emit_json(plan.to_json())
    else:
        _print(plan)


@plan_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    with open_vault(ctx) as vault:
        found = plans.list_plans(vault)
    if as_json:
        emit_json([p.to_json() for p in found])
        return
    for p in found:
        out.print(f"{p.name:16} {len(p.groups)} group(s), {len(p.machines)} machine(s)",
                  highlight=False, markup=False)


@plan_app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Forget the plan (its machines and their replication stay as they are)."""
    with open_vault(ctx) as vault:
        plans.delete(vault, name)
    out.print(f"deleted plan {name}", highlight=False)


@plan_app.command("failover")
def failover_cmd(
    ctx: typer.Context,
    name: str,
    test: bool = typer.Option(False, "--test", help="Test failover of every machine, group after group."),
    cleanup: bool = typer.Option(False, "--cleanup", help="Remove the plan's test machines."),
    shutdown_source: bool = typer.Option(False, "--shutdown-source", help="Real failover: shut each "
                                         "group's sources down and sync them last first."),
    at: str = typer.Option(None, "--at", help="--test: each machine's newest point not newer than "
                           "this time (ISO 8601; default: now)."),
    force_readiness: bool = typer.Option(
        False, "--force-readiness", help="Each machine goes on although a readiness requirement fails "
        "(needs --reason; recorded in each machine's job)."),
    reason: str = typer.Option(None, "--reason", help="Why, with --force-readiness."),
    fix_up: list[str] = typer.Option([], "--fix-up", help="Fix-ups on each machine's copy (see rehost "
                                     "failover --help)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fail the plan's machines over group after group, as one job: --test (isolated network),
    --cleanup, or a real failover (neither). `rehost job resume ID` continues it after a crash."""
    if reason is not None and not force_readiness:
        raise UsageError("--reason goes with --force-readiness")
    if test and cleanup:
        raise UsageError("give --test or --cleanup, not both")
    if at is not None and not test:
        raise UsageError("--at chooses the points of a test failover (--test)")
    if shutdown_source and (test or cleanup):
        raise UsageError("--shutdown-source is for a real failover (without --test/--cleanup)")
    kind = plan_jobs.TEST_FAILOVER if test else plan_jobs.TEST_CLEANUP if cleanup else plan_jobs.FAILOVER
    with open_vault(ctx) as vault:
        job = plan_jobs.start(vault, kind, name, at=at, shutdown_source=shutdown_source, fixups=fix_up,
                              readiness_force_reason=(reason or "") if force_readiness else None)
        _run(vault, job, kind, name, as_json)


@plan_app.command("complete")
def complete_cmd(
    ctx: typer.Context,
    name: str,
    force: bool = typer.Option(False, "--force", help="Complete although a machine's last failover "
                               "verdict did not pass (needs --reason; recorded)."),
    reason: str = typer.Option(None, "--reason", help="Why, with --force."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Complete the migration of every machine of the plan (refused unless each one's last
    failover verdict passed)."""
    if reason is not None and not force:
        raise UsageError("--reason goes with --force")
    with open_vault(ctx) as vault:
        job = plan_jobs.start(vault, plan_jobs.COMPLETE, name, force_reason=(reason or "") if force else None)
        _run(vault, job, plan_jobs.COMPLETE, name, as_json)


def _run(vault: Vault, job: JobRow, kind: str, name: str, as_json: bool) -> None:
    if not as_json:
        out.print(f"job {job.id}: {kind} of plan {name}", highlight=False, markup=False)
    job = run_job(vault, job.id)
    if as_json:
        emit_json(job_dict(vault, job))
    else:
        for s in job.steps:
            out.print(f"  {s.state:10} {s.title}", highlight=False, markup=False)
            for line in (s.detail or "").splitlines():
                out.print(f"             {line}", highlight=False, markup=False)
        verdict = (job.outputs or {}).get("verdict")
        if verdict:
            out.print(f"  verdict: {'passed' if verdict['ok'] else 'FAILED'}", highlight=False, markup=False)
            for c in verdict["checks"]:
                out.print(f"    {'ok  ' if c['ok'] else 'FAIL'} {c['machine']}/{c['name']}: {c['detail']}",
                          highlight=False, markup=False)
    if job.state != "succeeded":
        raise InvalidState(f"{kind} of plan {name} {job.state}: {job.error} (rehost job resume {job.id})")


@plan_app.command("confirm")
def confirm(ctx: typer.Context, name: str) -> None:
    """Confirm the manual action the plan's running job waits for."""
    with open_vault(ctx) as vault:
        text = plan_jobs.confirm(vault, name)
    out.print(f"confirmed: {text}", highlight=False, markup=False)
