"""A fleet under continuous replication loses a worker: PostgreSQL state, an ``s3://``
repository on SeaweedFS, Redis as Celery's broker, two ``rehost worker`` processes with
folders of their own (``rehost init --join``) and ``rehost serve`` as the scheduler — every
one a separate process, as a user runs them (rehost.testkit.fleet).

Twelve image machines replicate continuously while a writer keeps changing them. One worker
is killed (SIGKILL) in the middle of a cycle; the job it held must finish on the other worker,
no point may be lost, every point must equal a version its source really had (in order, the
last one the source's final state), and ``rehost check --read-data`` must be clean.

A new version of a disk is written beside it and renamed over it: a cycle opens the disk
once (one file descriptor, in place), so it reads one version whole, and each point can be
held to exactly one version of its source.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rehost.jobs.models import JobRow
from rehost.jobs.runner import get_job, list_jobs
from rehost.testkit.fleet import Fleet
from rehost.testkit.postgres import Postgres
from rehost.testkit.redis import RedisServer
from rehost.testkit.seaweedfs import SeaweedFS
from rehost.vault import inventory, policies
from rehost.vault.export import export_disk
from rehost.vault.vault import Vault

MiB = 1 << 20
SMALL = 11  # machines besides the big one
SMALL_SIZE, SMALL_DATA = 8 * MiB, 1 * MiB
BIG_SIZE = 320 * MiB  # long enough a cycle to be killed in the middle of it
BIG_BANDWIDTH = "64MB/s"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


class Disks:
    """The sources' disks and every version each one had, in order (by digest)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.versions: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def create(self, name: str, size: int, data: int, seed: int) -> Path:
        path = self.folder / f"{name}.img"
        rng = random.Random(seed)
        with open(path, "wb") as f:
            f.truncate(size)
            for _ in range(data // MiB):
                f.write(rng.randbytes(MiB))
        self.versions[name] = [_digest(path)]
        return path

    def change(self, name: str) -> None:
        """A new version: a copy with 64 KiB rewritten, renamed over the disk at once."""
        path = self.folder / f"{name}.img"
        new = path.with_suffix(".next")
        data = bytearray(path.read_bytes())
        at = random.randrange(0, SMALL_DATA // 65536) * 65536
        data[at:at + 65536] = os.urandom(65536)
        new.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            os.rename(new, path)
            self.versions[name].append(digest)


class Writer(threading.Thread):
    def __init__(self, disks: Disks, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.disks, self.names = disks, names
        self.halt = threading.Event()
        self.writes = 0

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.disks.change(random.choice(self.names))
            self.writes += 1


@pytest.fixture
def fleet(postgres: Postgres, redis: RedisServer, seaweedfs: SeaweedFS, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    with Fleet(tmp_path / "fleet", postgres, redis, seaweedfs, broker_db=random.randrange(1, 15)) as f:
        for k, v in f.extra_env.items():
            monkeypatch.setenv(k, v)
        yield f


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _replicate_jobs(vault: Vault) -> list[JobRow]:
    return [j for j in list_jobs(vault, limit=10_000) if j.kind == "replicate"]


@pytest.mark.slow
def test_a_worker_killed_mid_cycle_loses_nothing(fleet: Fleet, tmp_path: Path) -> None:
    disks = Disks(tmp_path)
    vault = Vault.open(fleet.main)
    try:
        policies.create_policy(vault, "continuous", crash_every="15s", rpo_threshold="5m", retention="1d")
        # the big machine's cycles are held to ~5 s by a bandwidth limit, so the kill below finds
        # one half way whatever the machine's speed (progress is reported every 0.5 s; an
        # unlimited cycle of a fast worker could pass the window between two reports)
        policies.create_policy(vault, "continuous-big", crash_every="15s", rpo_threshold="5m", retention="1d",
                               bandwidth=BIG_BANDWIDTH)
        names = [f"m{i:02d}" for i in range(SMALL)]
        for i, name in enumerate(names):
            path = disks.create(name, SMALL_SIZE, SMALL_DATA, i)
            inventory.add_source(vault, "image", name, {"paths": [str(path)]})
        big = disks.create("big", BIG_SIZE, BIG_SIZE, 99)
        inventory.add_source(vault, "image", "big", {"paths": [str(big)]})
        for name in names:
            policies.attach(vault, name, "continuous")
        policies.attach(vault, "big", "continuous-big")
        big_id = inventory.get_machine(vault, "big").id

        workers = {fleet.worker(w, concurrency=2).pid: w for w in ("worker-a", "worker-b")}
        fleet.scheduler(workers=4)
        writer = Writer(disks, names)
        writer.start()

        # the big machine's first cycle, caught in the middle on whichever worker runs it
        deadline = time.monotonic() + 300
        while True:
            assert not fleet.died(), f"{fleet.died()} died; logs in {fleet.logs}"
            assert time.monotonic() < deadline, "the big machine's cycle never got half way"
            running = [j for j in list_jobs(vault, big_id) if j.kind == "replicate" and j.state == "running"]
            step = running[0].steps[0] if running and running[0].steps else None
            half_way = step is not None and step.total and step.total // 10 < step.done < step.total // 2
            if half_way and running[0].pid in workers:
                victim = running[0]
                break
            time.sleep(0.05)
        points_before = {p.id for p in vault.repo.list_points()}
        os.kill(victim.pid, signal.SIGKILL)
        killed = workers.pop(victim.pid)
        fleet.processes.pop(killed).wait(10)
        [(survivor_pid, survivor)] = workers.items()

        # the lease lapses; the scheduler sends the job again and the other worker resumes it
        deadline = time.monotonic() + 300
        while (done := get_job(vault, victim.id)).state not in ("succeeded", "failed"):
            assert not fleet.died(), f"{fleet.died()} died; logs in {fleet.logs}"
            assert time.monotonic() < deadline, f"the killed worker's job {victim.id} never finished"
            time.sleep(0.5)
        assert done.state == "succeeded", done.error
        assert done.pid == survivor_pid, f"job {victim.id} ran on pid {done.pid}, not on {survivor}"

        # keep replicating a while with one worker, then let the last writes reach a point
        time.sleep(20)
        writer.halt.set()
        writer.join()
        settled = datetime.now(UTC)
        deadline = time.monotonic() + 300
        while True:  # every machine has a cycle that started after the last write
            fresh = {j.machine_name for j in _replicate_jobs(vault)
                     if j.state == "succeeded" and j.started_at and _utc(j.started_at) > settled}
            if fresh >= {*names, "big"}:
                break
            assert not fleet.died(), f"{fleet.died()} died; logs in {fleet.logs}"
            assert time.monotonic() < deadline, f"no point after the last write for {set(names) - fresh}"
            time.sleep(1)
        fleet.stop("serve")
        deadline = time.monotonic() + 120
        while any(j.state in ("queued", "running") for j in _replicate_jobs(vault)):
            assert time.monotonic() < deadline, "jobs still running after the scheduler stopped"
            time.sleep(0.5)
        fleet.stop()

        # no point lost: every point there was, and every succeeded cycle's point, is stored
        points = vault.repo.list_points()
        stored = {p.id for p in points}
        assert points_before <= stored
        jobs = _replicate_jobs(vault)
        made = {j.outputs["point"] for j in jobs if j.state == "succeeded"}  # the last 20 per machine
        assert made <= stored
        assert writer.writes > 20

        # every point is a version its source had, in the order the source had them, and the
        # newest is the source's final state
        for name in [*names, "big"]:
            versions = disks.versions[name]
            seen = []
            for pid in [p.id for p in sorted(vault.repo.list_points(inventory.get_machine(vault, name).id),
                                             key=lambda p: p.time)]:
                out = tmp_path / f"export-{pid[:12]}.raw"
                export_disk(vault, name, pid, 0, out)
                digest = _digest(out)
                out.unlink()
                assert digest in versions, f"{name}: point {pid[:12]} is no version of its source"
                seen.append(versions.index(digest))
            assert seen == sorted(seen), f"{name}: points out of order with its versions: {seen}"
            assert seen[-1] == len(versions) - 1, f"{name}: the newest point is not the final state"
        print(f"\n{len(stored)} points of 12 machines, {writer.writes} writes, killed {killed} "
              f"mid-cycle; job {victim.id} finished on {survivor}")
    finally:
        vault.close()

    check = fleet.run(fleet.main, "check", "--read-data")
    assert ": no errors" in check, check
