"""A fleet vault made of real processes, for the fleet's tests and ``bench/fleet.py``.

A fleet is what a user sets up when one host is not enough (README, "A fleet"): the state in
PostgreSQL, the repository in an object store, Celery's broker on Redis, and every host or
worker with a folder of its own (``rehost init --join``). This module drives exactly those
commands as separate processes — ``rehost init``, ``rehost worker``, ``rehost serve`` — so
what is tested and measured is what a user runs, not an in-process stand-in.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from rehost.errors import RehostError
from rehost.testkit.postgres import Postgres
from rehost.testkit.redis import RedisServer
from rehost.testkit.seaweedfs import SeaweedFS

REHOST = [sys.executable, "-m", "rehost.cli.main"]
#: where the processes run: the checkout, so ``python -m rehost`` finds this tree
REPO = Path(__file__).resolve().parents[2]


class FleetError(RehostError):
    """A fleet process did not start or a fleet command failed."""

    user_error = False


def start_worker(folder: Path, env: dict[str, str], log: Path, *, concurrency: int | None = None,
                 timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start ``rehost worker`` on a vault folder and return once Celery says it is ready
    (before that, a job sent would wait in the broker and timings would include the start)."""
    args = [*REHOST, "--vault", str(folder), "worker", "--loglevel", "INFO"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    out: IO[bytes] = open(log, "wb")  # noqa: SIM115 - the child writes it for its lifetime
    try:
        p = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
    deadline = time.monotonic() + timeout
    while b" ready." not in log.read_bytes():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise FleetError(f"rehost worker did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return p


class Fleet:
    """One fleet vault on shared services: a fresh database, bucket and broker database.

    ``env`` is what every process of the fleet gets (the database password, the object
    store's keys, the broker URL); ``extra_env`` is the part a caller adds to its own
    environment to open the vault in-process.
    """

    def __init__(self, root: Path, pg: Postgres, redis: RedisServer, s3: SeaweedFS, *,
                 broker_db: int = 1) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        database = pg.create_database(f"fleet_{secrets.token_hex(4)}")
        bucket = s3.create_bucket(f"fleet-{secrets.token_hex(4)}")
        self.extra_env = {**pg.env(), **s3.env,
                          "REHOST_BROKER_URL": redis.url.rsplit("/", 1)[0] + f"/{broker_db}"}
        self.env = {**os.environ, **self.extra_env}
        self.urls = ["--database", database, "--repository", f"s3://{bucket}/vault?endpoint={s3.endpoint}"]
        self.main = root / "vault"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.run(self.main, "init", *self.urls)

    def run(self, folder: Path, *args: str) -> str:
        """One ``rehost`` command on a folder of the fleet; its output, or an error saying why."""
        p = subprocess.run([*REHOST, "--vault", str(folder), *args], cwd=REPO, env=self.env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if p.returncode:
            raise FleetError(f"rehost {' '.join(args)}: exit {p.returncode}: {p.stderr[-2000:]}")
        return p.stdout

    def folder(self, name: str) -> Path:
        """A host's or worker's own folder, joined to the fleet on first use."""
        folder = self.root / name
        if not folder.exists():
            self.run(folder, "init", "--join", *self.urls)
        return folder

    def worker(self, name: str, *, concurrency: int | None = None) -> subprocess.Popen[bytes]:
        p = start_worker(self.folder(name), self.env, self.logs / f"{name}.log", concurrency=concurrency)
        self.processes[name] = p
        return p

    def scheduler(self, *, workers: int | None = None, tick: float = 1.0) -> subprocess.Popen[bytes]:
        """``rehost serve --listen off`` on the main folder: the fleet's scheduler."""
        args = [*REHOST, "--vault", str(self.main), "serve", "--listen", "off", "--tick", str(tick)]
        if workers:
            args += ["--workers", str(workers)]
        out = open(self.logs / "serve.log", "wb")  # noqa: SIM115
        try:
            p = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.processes["serve"] = p
        return p

    def died(self) -> list[str]:
        """The processes that exited though nobody stopped them."""
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def stop(self, name: str | None = None, *, timeout: float = 30.0) -> None:
        """Stop one process (or all) as a user would: SIGTERM, then SIGKILL after ``timeout``."""
        names = [name] if name else list(self.processes)
        for n in names:
            if self.processes[n].poll() is None:
                self.processes[n].terminate()
        for n in names:
            p = self.processes.pop(n)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
