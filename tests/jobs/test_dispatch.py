"""Jobs sent to ``rehost worker`` processes over a real Redis (Celery), and followed by the
command that sent them; a worker killed mid-job leaves the job to another."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.jobs import dispatch
from rehost.jobs.runner import get_job, list_jobs
from rehost.testkit.fleet import start_worker
from rehost.testkit.redis import RedisServer
from rehost.vault.vault import Vault
from tests.cli_helpers import REHOST, REPO, rehost

MiB = 1 << 20


def image(path: Path, size: int, data: int, seed: int = 1) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(data // MiB):
            f.write(rng.randbytes(MiB))
    return path


class Workers:
    def __init__(self, vault: Path, env: dict[str, str]) -> None:
        self.vault, self.env = vault, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        p = start_worker(self.vault, {**os.environ, **self.env}, log, concurrency=2)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def setup(redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Workers]]:
    vault = tmp_path / "vault"
    env = {"REHOST_BROKER_URL": redis.url.replace("/0", f"/{random.randrange(1, 15)}")}
    rehost(vault, "init")
    w = Workers(vault, env)
    try:
        yield vault, env, w
    finally:
        w.stop()


def test_without_a_broker_jobs_run_in_the_command(tmp_path: Path) -> None:
    v = Vault.init(tmp_path / "v")
    try:
        assert dispatch.broker_url(v) is None
    finally:
        v.close()


def test_a_worker_runs_what_the_cli_sends(setup: tuple[Path, dict[str, str], Workers],
                                          tmp_path: Path) -> None:
    vault, env, workers = setup
    src = image(tmp_path / "web.img", 16 * MiB, 3 * MiB)
    rehost(vault, "source", "add", "image", "web", str(src), env=env)
    worker = workers.start(tmp_path / "w1.log")
    r = rehost(vault, "replicate", "web", "--json", env=env)
    point = r.json()["point"]
    v = Vault.open(vault)
    try:
        [job] = [j for j in list_jobs(v) if j.kind == "replicate"]
        assert job.state == "succeeded" and job.pid == worker.pid  # the worker ran it, not the CLI
        assert [p.id for p in v.repo.list_points()] == [point]
    finally:
        v.close()
    assert "job " in (tmp_path / "w1.log").read_text() and "succeeded" in (tmp_path / "w1.log").read_text()


@pytest.mark.slow
def test_a_worker_killed_mid_job_leaves_it_to_another(setup: tuple[Path, dict[str, str], Workers],
                                                      tmp_path: Path) -> None:
    vault, env, workers = setup
    src = image(tmp_path / "big.img", 384 * MiB, 384 * MiB, seed=2)
    rehost(vault, "source", "add", "image", "big", str(src), env=env)
    first = workers.start(tmp_path / "w1.log")
    cli = subprocess.Popen([*REHOST, "--vault", str(vault), "replicate", "big"], cwd=REPO,
                           env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    v = Vault.open(vault)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the worker is half way through the cycle
            jobs = [j for j in list_jobs(v) if j.kind == "replicate"]
            steps = jobs[0].steps if jobs else []
            if steps and steps[0].total and 0 < steps[0].done < steps[0].total // 2:
                break
            assert time.monotonic() < deadline, "the cycle never started on the worker"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        job_id = jobs[0].id
        second = workers.start(tmp_path / "w2.log")
        # the lease lapses (TTL), the job shows interrupted: the command that sent it and still
        # waits for it sends it again by itself, and the second worker resumes it
        cli_out, cli_err = cli.communicate(timeout=180)
        assert cli.returncode == 0, cli_out.decode() + cli_err.decode()
        done = get_job(v, job_id)
        assert done.state == "succeeded" and done.pid == second.pid
        [point] = v.repo.list_points()
        out = tmp_path / "export.raw"
        rehost(vault, "export", "big", "--point", point.id, "--disk", "0", "--output", str(out), env=env)
        assert subprocess.run(["cmp", str(out), str(src)]).returncode == 0
    finally:
        v.close()
        cli.kill()
        cli.wait()


def test_a_job_taken_by_a_worker_that_died_before_claiming_it_is_resent_at_once(tmp_path: Path) -> None:
    """The message was acknowledged on receipt and died with the worker: the job is queued
    with the dead worker's mark, so it is sent again now, not after RESEND_QUEUED_AFTER_S."""
    from rehost.jobs import leases
    from rehost.jobs.models import JobRow
    from rehost.jobs.runner import Step, create_job, plan, resumable_jobs

    @plan("taken-test")
    def _noop(vault: Vault, job: JobRow) -> list[Step]:
        return [Step("noop", "Nothing", lambda ctx: "ok")]

    v = Vault.init(tmp_path / "v")
    try:
        job = create_job(v, "taken-test", None, "", {})
        assert not dispatch._orphaned(v, get_job(v, job.id))  # just queued: waiting for a worker
        alive = leases.try_acquire(v, "worker:here:1", "worker")
        assert isinstance(alive, leases.Lease)
        with v.session() as s, s.begin():
            s.get(JobRow, job.id).holder = "worker:here:1"  # type: ignore[union-attr]
        assert not dispatch._orphaned(v, get_job(v, job.id))  # its worker lives: it will claim it
        assert job.id not in [j.id for j in resumable_jobs(v, queued_for=600)]
        alive.release()  # the worker is gone
        assert dispatch._orphaned(v, get_job(v, job.id))
        assert [j.id for j in resumable_jobs(v, queued_for=600)] == [job.id]
    finally:
        v.close()


def test_jobs_sent_from_several_threads_at_once_share_one_app(tmp_path: Path) -> None:
    """``rehost serve`` sends from its threads: the first imports of celery side by side
    failed ("cannot import name 'Celery'"), and each thread made an app of its own."""
    script = tmp_path / "race.py"
    script.write_text(
        "import threading\n"
        "from rehost.jobs import dispatch\n"
        "b = threading.Barrier(8); apps = []; errors = []\n"
        "def send():\n"
        "    b.wait()\n"
        "    try:\n"
        "        apps.append(dispatch.app('redis://127.0.0.1:9/0'))\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "ts = [threading.Thread(target=send) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(len(apps), len({id(a) for a in apps}), errors)\n"
    )
    for _ in range(3):  # a fresh interpreter each time: celery not yet imported
        out = subprocess.run([REHOST[0], str(script)], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=True).stdout.split()
        assert out[:2] == ["8", "1"], out


def test_a_job_that_cannot_be_sent_fails_and_frees_its_machine(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Left queued, it held its machine until the scheduler's resend ten minutes later."""
    from rehost.jobs.models import JobRow
    from rehost.jobs.runner import Step, create_job, plan

    @plan("unsent-test")
    def _noop(vault: Vault, job: JobRow) -> list[Step]:
        return [Step("noop", "Nothing", lambda ctx: "ok")]

    class Down:  # the broker refuses the message (as kombu raises when Redis is gone)
        def send_task(self, *args: object, **kwargs: object) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setenv("REHOST_BROKER_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setattr(dispatch, "app", lambda url: Down())
    v = Vault.init(tmp_path / "v")
    try:
        job = create_job(v, "unsent-test", None, "", {})
        with pytest.raises(ConnectionRefusedError):
            dispatch.execute(v, job.id)
        failed = get_job(v, job.id)
        assert failed.state == "failed"
        assert "could not send the job to a worker" in (failed.error or "")
        assert "Connection refused" in (failed.error or "")
    finally:
        v.close()
