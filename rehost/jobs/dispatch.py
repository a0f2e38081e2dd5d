"""Where a job runs: in this process (the embedded default) or on a ``rehost worker`` (Celery,
when the vault names a broker).

Every operation is a job in the vault's database (``rehost.jobs.runner``); this module only
decides who runs it. Without a broker, ``execute`` runs the job here, as before. With one
(``broker`` in ``vault.json``, or ``$REHOST_BROKER_URL``), ``execute`` sends the job's id to
a queue and waits for the job's row to reach a final state, showing its steps as they end.
The message carries nothing but the id: what the job does, its progress and its result live
in the database, so a worker on another host needs only the same database, repository and
broker.

Queues: ``rehost`` for work any worker can do (replication cycles, Azure); ``rehost.host.<name>``
for jobs tied to one host (a local QEMU target and its point servers run where its folder
is). A worker consumes both its host's queue and the shared one.

Delivery is at most once on purpose (Celery acknowledges on receipt): a worker that dies
mid-job leaves the job ``interrupted`` when its lease lapses, and the scheduler (``rehost
serve``) sends it again; the next worker resumes it at the step where it stopped. A job sent
twice runs once: the runner claims it by lease, and a finished job is refused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from rehost.errors import InvalidState, UsageError
from rehost.jobs import leases
from rehost.jobs.models import JobRow
from rehost.jobs.runner import (
    TAKEN_BY,
    Observer,
    effective_state,
    get_job,
    live_jobs,
    live_workers,
    run_job,
    taken_by_a_dead_worker,
)
from rehost.vault.vault import Vault

if TYPE_CHECKING:
    from celery import Celery

SHARED_QUEUE = "rehost"
TASK = "rehost.run_job"
FINAL = ("succeeded", "failed", "cancelled")
#: kinds of job that run where their target is when it boots from NBD (point servers, QEMU)
TARGET_BOUND = ("test-failover", "test-cleanup", "failover")
POLL_S = 0.3
#: a queued job waits its turn in the broker while workers are busy: only after this long
#: does the scheduler suspect its message was lost and send it again (sent twice, it runs once)
log = logging.getLogger("rehost.jobs")
RESEND_QUEUED_AFTER_S = 600.0

_apps: dict[str, Celery] = {}
#: ``rehost serve`` sends jobs from several threads: two first imports of celery at once fail
#: ("cannot import name 'Celery'": celery swaps its module for a lazy one mid-import), and two
#: apps for one URL would register the task twice
_apps_lock = threading.Lock()
#: the vault a worker process serves (set by ``rehost worker``)
_worker_vault: Vault | None = None
_worker_name: str | None = None


def broker_url(vault: Vault) -> str | None:
    url = os.environ.get("REHOST_BROKER_URL") or vault.config.get("broker")
    return str(url) if url else None


def creator(vault: Vault) -> str | None:
    """The ``creator`` to record on a job about to be queued: this process when there is no
    broker, since it runs the job itself. If it is killed first, its job must not hold the
    machine: it shows as interrupted, and the next operation goes on."""
    return leases.new_holder() if broker_url(vault) is None else None


def host_queue(host: str | None = None) -> str:
    return f"{SHARED_QUEUE}.host.{host or socket.gethostname()}"


def queue_for(vault: Vault, job: JobRow) -> str:
    """The host's queue for a job that must run where its target is, else the shared one."""
    if job.kind in TARGET_BOUND and job.params.get("target"):
        from rehost.vault import targets

        row = targets.get_target(vault, str(job.params["target"]))
        if targets.provider(row).capabilities.boots_from_nbd:
            return host_queue(str(row.settings.get("host") or "") or None)
    if job.kind == "test-cleanup":  # it looks on every target: run it where local ones are
        return host_queue()
    return SHARED_QUEUE


def app(url: str) -> Celery:
    """One Celery app per broker URL, made on first use (Celery costs ~0.3 s to import)."""
    with _apps_lock:
        return _apps.get(url) or _new_app(url)


def _new_app(url: str) -> Celery:
    from celery import Celery

    a = Celery("rehost", broker=url, set_as_current=False)
    a.conf.update(
        task_default_queue=SHARED_QUEUE,
        task_acks_late=False,  # at most once: the scheduler resends what a dead worker left
        worker_prefetch_multiplier=1,  # a busy worker does not hold jobs another could run
        # ...and holds no message it has no free slot for (Redis): a worker killed takes only
        # the jobs it was running with it, which their lapsed leases show at once; a message
        # it had merely reserved would be lost until RESEND_QUEUED_AFTER_S
        worker_disable_prefetch=True,
        task_ignore_result=True,  # results are the job's rows
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 3600},
    )
    a.task(name=TASK, ignore_result=True)(_run_in_worker)
    from celery.signals import task_received

    task_received.connect(_taken, weak=False)
    _apps[url] = a
    return a


def submit(vault: Vault, job: JobRow) -> str:
    """Send the job to a worker; returns the queue. ``UsageError`` without a broker.

    A failed job is sent as a retry (``rehost job resume``); any other is sent to be run or
    continued only, so that a message delivered again after the job failed does not run it
    a second time behind the operator's back."""
    url = broker_url(vault)
    if url is None:
        raise UsageError("no broker configured (rehost init --broker URL, or $REHOST_BROKER_URL)")
    queue = queue_for(vault, job)
    if job.state == "queued" and job.holder:  # a dead worker's mark: the next taker sets its own
        with vault.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job.id, JobRow.state == "queued").values(holder=None))
    try:
        app(url).send_task(TASK, args=[job.id, job.state == "failed"], queue=queue)
    except Exception as e:
        # a job that never started must not hold its machine until the scheduler's resend
        # (RESEND_QUEUED_AFTER_S): it failed, and says why; the next cycle or a resume goes on
        with vault.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job.id, JobRow.state == "queued").values(
                state="failed", error=f"could not send the job to a worker: {type(e).__name__}: {e}",
                ended_at=datetime.now(UTC)))
        raise
    return queue


def execute(vault: Vault, job_id: str, observer: Observer | None = None,
            on_queued: Any = None) -> JobRow:
    """Run the job: here without a broker, else on a worker (waiting for it to end)."""
    if broker_url(vault) is None:
        return run_job(vault, job_id, observer)
    job = get_job(vault, job_id)
    queue = submit(vault, job)
    if on_queued is not None:
        on_queued(queue)
    return wait(vault, job.id, observer)


def wait(vault: Vault, job_id: str, observer: Observer | None = None) -> JobRow:
    """Follow a job another process runs until it ends; the observer sees each step start,
    move and end, as it would in-process.

    A worker that dies mid-job does not leave the caller waiting for ever: once the job's
    lease has lapsed (or its message has waited too long), the job is sent again and the
    next worker resumes it at the step where it stopped."""
    seen: dict[int, tuple[str, int]] = {}
    sent = time.monotonic()
    while True:
        job = get_job(vault, job_id)
        if job.state not in FINAL and time.monotonic() - sent >= leases.TTL_S and _orphaned(vault, job):
            submit(vault, job)
            sent = time.monotonic()
        if observer is not None:
            for step in job.steps:
                before = seen.get(step.index)
                now = (step.state, step.done)
                if before == now:
                    continue
                if step.state != "pending" and (before is None or before[0] == "pending"):
                    observer.step_started(job, step)
                if step.state == "running":
                    observer.step_progress(job, step)
                elif step.state not in ("pending",) and (before is None or before[0] != step.state):
                    observer.step_ended(job, step)
                seen[step.index] = now
        if job.state in FINAL:
            return job
        time.sleep(POLL_S)


def _orphaned(vault: Vault, job: JobRow) -> bool:
    """No runner holds the job: its worker died (lease lapsed), or its message is lost."""
    if job.state == "queued":
        if taken_by_a_dead_worker(job, live_workers(vault)):
            return True
        created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=UTC)
        return (datetime.now(UTC) - created).total_seconds() >= RESEND_QUEUED_AFTER_S
    return effective_state(job, live_jobs(vault)) == "interrupted"


def serve_vault(vault: Vault, name: str | None = None) -> None:
    """Called by ``rehost worker`` before it consumes: the vault its tasks run jobs in, and
    the worker's name (its ``worker:<name>`` lease says it is alive)."""
    global _worker_vault, _worker_name
    _worker_vault, _worker_name = vault, name


def _taken(request: Any = None, **_: Any) -> None:
    """Celery's ``task_received``, in the worker, before the message is acknowledged: mark
    the job as this worker's, so that if the worker dies before it claims the job, whoever
    waits for it resends it at once instead of after RESEND_QUEUED_AFTER_S."""
    if _worker_vault is None or _worker_name is None or request is None:
        return
    try:
        job_id = str(request.args[0])
        with _worker_vault.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "queued")
                      .values(holder=f"{TAKEN_BY}{_worker_name}"))
    except Exception:
        log.warning("could not mark job as taken", exc_info=True)


def _run_in_worker(job_id: str, retry: bool = False) -> str:
    """The Celery task: run (or resume) one job in the worker's vault; a job that ended
    meanwhile is left as it is unless the message asks for a retry."""
    if _worker_vault is None:
        raise RuntimeError("rehost.run_job runs only in a rehost worker")
    try:
        state = get_job(_worker_vault, job_id).state
        if state in FINAL and not (retry and state == "failed"):
            return f"job {job_id} not run: it has {state}"
        job = run_job(_worker_vault, job_id)
    except InvalidState as e:  # sent twice, taken by another worker, or finished meanwhile
        return f"job {job_id} not run: {e}"
    return f"job {job.id} {job.state}"
