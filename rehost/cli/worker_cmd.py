"""``rehost worker``: a Celery worker that runs the vault's jobs (a "process server").

With a broker in the vault's configuration (``rehost init --broker redis://...``), the
commands, the API and the scheduler send jobs to workers instead of running them in their own
process (``rehost.jobs.dispatch``). A worker takes jobs from the shared queue and from its
host's queue, runs each through the same job code as everywhere else, and needs only what the
vault's configuration names: the database, the repository and the broker; its folder (the
``--vault`` it is started with, made by ``rehost init --join``) holds its own caches and
journals. Kill one mid-job and the job is resumed by another when its lease lapses.
"""

from __future__ import annotations

import os
import socket

import typer

from rehost.cli.context import err, open_vault
from rehost.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)


def worker(
    ctx: typer.Context,
    concurrency: int = typer.Option(None, min=1, max=256,
                                    help="Jobs run at once (default: two per CPU core)."),
    loglevel: str = typer.Option("WARNING", help="Celery's log level (INFO shows every job)."),
) -> None:
    """Run jobs sent by the broker (Celery on Redis) until stopped: replication cycles,
    failovers and syncs, from any host that shares the vault's database and repository."""
    from rehost.jobs import dispatch, leases
    from rehost.sources import credentials
    from rehost.vault.scheduler import default_workers

    credentials.no_prompts()  # a job must not wait on this terminal

    with open_vault(ctx) as vault:
        url = dispatch.broker_url(vault)
        if url is None:
            raise UsageError("this vault has no broker: create it with rehost init --broker URL "
                             "(or set REHOST_BROKER_URL); without one, jobs run in the commands themselves")
        name = f"{socket.gethostname()}:{os.getpid()}"
        dispatch.serve_vault(vault, name)
        alive = leases.try_acquire(vault, f"worker:{name}", "worker")  # what liveness metrics read
        queues = [dispatch.SHARED_QUEUE, dispatch.host_queue()]
        err.print(f"rehost worker {name}: queues {', '.join(queues)}", highlight=False)
        try:
            dispatch.app(url).worker_main([
                "worker", "--pool", "threads", "--concurrency", str(concurrency or default_workers()),
                "--queues", ",".join(queues), "--hostname", f"rehost@{name}", "--loglevel", loglevel,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ])
        finally:
            if isinstance(alive, leases.Lease):
                alive.release()
