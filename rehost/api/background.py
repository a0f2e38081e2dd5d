"""Running jobs in the server: each in a thread of its own, with a vault of its own.

The request that starts a job returns at once (202 and the job id); the thread runs the same
``run_job`` the CLI runs, so the steps, their records and their resumability are identical.
If the server dies, the job shows as interrupted and ``rehost job resume ID`` continues it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from rehost.api.deps import VaultPool
from rehost.jobs import dispatch
from rehost.jobs.models import JobRow
from rehost.jobs.runner import run_job
from rehost.vault.vault import Vault

log = logging.getLogger("rehost.api")


class JobLauncher:
    def __init__(self, pool: VaultPool) -> None:
        self.pool = pool
        #: held while a job is checked and created, so two requests cannot both start one
        self.start_lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, vault: Vault, create: Callable[[Vault], JobRow]) -> JobRow:
        """Create a job (the services refuse a wrong state first), then run it in a thread."""
        with self.start_lock:
            job = create(vault)
        if dispatch.broker_url(vault) is not None:  # a worker runs it; the job's rows say how it goes
            dispatch.submit(vault, job)
            return job
        t = threading.Thread(target=self._run, args=(job.id,), name=f"rehost-job-{job.id}", daemon=True)
        self._threads[job.id] = t
        t.start()
        return job

    def _run(self, job_id: str) -> None:
        try:
            vault = self.pool.open()
        except Exception:
            log.exception("job %s could not open the vault; it stays queued (cancel it)", job_id)
            return
        try:
            job = run_job(vault, job_id)
            log.info("job %s %s of %s: %s", job.id, job.kind, job.machine_name, job.state)
        except Exception:
            log.exception("job %s stopped unexpectedly", job_id)
        finally:
            vault.close()
            self._threads.pop(job_id, None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running jobs (tests, and a server that stops cleanly)."""
        for t in list(self._threads.values()):
            t.join(timeout)
