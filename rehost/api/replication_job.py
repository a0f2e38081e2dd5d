"""``replicate`` as a job, so the portal can show the first full copy's progress like any
failover (ASR's "Enable replication" job). The work is protection.replicate, unchanged.

Any process that lists jobs must import this module (it registers the plan), or it cannot
describe a replicate job.
"""

from __future__ import annotations

from rehost.errors import InvalidState
from rehost.jobs.models import JobRow
from rehost.jobs.runner import Step, StepContext, create_job, plan, running_jobs
from rehost.vault.inventory import get_machine
from rehost.vault.protection import replicate
from rehost.vault.states import require
from rehost.vault.vault import Vault

KIND = "replicate"


def start_replicate_job(vault: Vault, name: str, *, app_consistent: bool = False) -> JobRow:
    """Refuse at once what replicate would refuse (state, a job already running), then queue."""
    machine = get_machine(vault, name)
    busy = running_jobs(vault, machine.id)
    if busy:
        raise InvalidState(f"{name} has a {busy[0].kind} job running ({busy[0].id}); wait for it")
    require("replicate", machine.state, name, machine.state_reason)
    return create_job(vault, KIND, machine.id, name, {"app_consistent": app_consistent})


@plan(KIND)
def _replicate_plan(vault: Vault, job: JobRow) -> list[Step]:
    def run(ctx: StepContext) -> str:
        r = replicate(ctx.vault, ctx.job.machine_name, ctx.progress,
                      app_consistent=bool(ctx.params.get("app_consistent")))
        ctx.save_outputs(point=r.point.id)
        return (f"point {r.point.short_id} ({r.point.consistency.value}): read {r.bytes_read} bytes, "
                f"{r.changed_bytes} changed, stored {r.stats.stored_bytes}")

    return [Step("replicate", "Replicate (a full copy first, then changed blocks)", run)]
