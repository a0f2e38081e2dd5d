"""Leases in the vault's database: per machine, job claims, prune against writers, readers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from rehost.errors import InvalidState
from rehost.jobs import leases
from rehost.jobs.models import LeaseRow
from rehost.jobs.runner import create_job, effective_state, get_job, live_jobs, resumable_jobs, run_job
from rehost.vault.vault import Vault


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.init(tmp_path / "v")
    yield v
    v.close()


def test_a_machine_is_held_once_and_says_by_what(vault: Vault) -> None:
    with leases.machine(vault, "m1", "web", "failover", job_id="abc123"):
        with leases.machine(vault, "m1", "web", "replicate"):  # same thread: re-entrant
            pass
        errors: list[str] = []

        def other() -> None:
            try:
                with leases.machine(vault, "m1", "web", "replicate"):
                    pass
            except InvalidState as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1
        assert errors[0].startswith("web is busy: failover (job abc123) has been running"), errors
        with leases.machine(vault, "m2", "db", "replicate"):  # another machine is not affected
            pass
    with leases.machine(vault, "m1", "web", "replicate"):  # released
        pass


def test_an_expired_lease_is_taken_over(vault: Vault) -> None:
    got = leases.try_acquire(vault, "machine:x", "replicate")
    assert isinstance(got, leases.Lease)
    leases._keeper.forget(got)  # its holder stops renewing (a hung or partitioned runner)
    assert isinstance(leases.try_acquire(vault, "machine:x", "replicate"), LeaseRow)
    with vault.session() as s, s.begin():
        s.execute(update(LeaseRow).values(expires_at=time.time() - 1))
    again = leases.try_acquire(vault, "machine:x", "failover")
    assert isinstance(again, leases.Lease) and again.holder != got.holder
    got.release()  # the old holder's release does not drop the new holder's lease
    assert leases.holders(vault, "machine:x")[0].holder == again.holder
    again.release()


def test_the_lease_of_a_killed_process_on_this_host_is_free_at_once(vault: Vault, tmp_path: Path) -> None:
    code = ("import sys, os; from pathlib import Path; from rehost.vault.vault import Vault; "
            "from rehost.jobs import leases; v = Vault.open(Path(sys.argv[1])); "
            "leases.try_acquire(v, 'machine:x', 'replicate'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(vault.root)], check=True)
    row = leases.holders(vault, "", now=0.0)
    assert row == []  # stale: its pid is gone, even though the term has not run out
    assert isinstance(leases.try_acquire(vault, "machine:x", "replicate"), leases.Lease)


def test_the_keeper_renews_what_this_process_holds(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    got = leases.try_acquire(vault, "machine:y", "replicate")
    assert isinstance(got, leases.Lease)
    first = leases.holders(vault, "machine:y")[0].expires_at
    deadline = time.monotonic() + leases.RENEW_EVERY_S + 5
    while leases.holders(vault, "machine:y")[0].expires_at == first:
        assert time.monotonic() < deadline, "the keeper did not renew the lease"
        time.sleep(0.2)
    got.release()


def test_prune_waits_for_writers_and_writers_wait_for_prune(vault: Vault) -> None:
    order: list[str] = []
    writing = threading.Event()
    with leases.writing(vault, "replicate"):
        def prune() -> None:
            with leases.pruning(vault, timeout=30):
                order.append("prune")
                writing.wait(0.5)  # a writer that arrives now must wait
                order.append("prune done")

        t = threading.Thread(target=prune)
        t.start()
        time.sleep(0.5)
        assert order == []  # the running cycle holds prune off
        order.append("cycle done")
    deadline = time.monotonic() + 10
    while "prune" not in order:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with leases.writing(vault, "replicate", timeout=30):
        order.append("next cycle")
    t.join()
    assert order == ["cycle done", "prune", "prune done", "next cycle"]


def test_points_being_read_are_known_to_prune(vault: Vault) -> None:
    with leases.reading(vault, ["p1", "p2"]), leases.reading(vault, ["p3"]):
        assert leases.points_being_read(vault) == {"p1", "p2", "p3"}
    assert leases.points_being_read(vault) == set()


def test_a_job_is_claimed_once_and_a_dead_runner_frees_it(vault: Vault) -> None:
    from rehost.jobs.runner import Step, plan

    seen: list[str] = []

    @plan("test-lease-job")
    def _plan(vault: Vault, job: object) -> list[Step]:
        def step(ctx: object) -> str:
            seen.append("ran")
            with pytest.raises(InvalidState, match="is running in"):
                run_job(vault, job_id)  # a second runner of the same job is refused
            return "ok"

        return [Step("only", "Only step", step)]

    job_id = create_job(vault, "test-lease-job", None, "", {}).id
    assert run_job(vault, job_id).state == "succeeded" and seen == ["ran"]
    # a runner that died: the job says running, its holder's process is gone
    job2 = create_job(vault, "test-lease-job", None, "", {}).id
    with vault.session() as s, s.begin():
        from rehost.jobs.models import JobRow

        s.execute(update(JobRow).where(JobRow.id == job2).values(state="running", holder="nohost:1:x"))
    assert effective_state(get_job(vault, job2), live_jobs(vault)) == "interrupted"
    assert [j.id for j in resumable_jobs(vault)] == [job2]
