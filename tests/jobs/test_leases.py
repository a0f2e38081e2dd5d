"""Leases in the vault's database: per machine, job claims, prune against writers, readers,
and processes racing for the same lease or job.

The same rules must hold on both databases: these tests run on SQLite in the main run and on
PostgreSQL (true row locks, READ COMMITTED) in its tier (``REHOST_TEST_DATABASE=postgresql``,
see tests/conftest.py).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from rehost.errors import InvalidState
from rehost.jobs import leases
from rehost.jobs.models import JobRow, LeaseRow
from rehost.jobs.runner import (
    Step,
    StepContext,
    create_job,
    effective_state,
    get_job,
    live_jobs,
    plan,
    resumable_jobs,
    run_job,
)
from rehost.vault.vault import Vault

RACE_ROUNDS = 40
RACERS = 4


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
    assert isinstance(leases.try_acquire(vault, "machine:x", "replicate"), LeaseRow)  # held again
    got.release()  # the old holder's release does not drop the new holder's lease
    assert leases.holders(vault, "machine:x")[0].holder == again.holder
    again.release()
    assert leases.holders(vault, "machine:x") == []


def test_a_holder_that_renewed_keeps_its_lease(vault: Vault) -> None:
    """The takeover is a compare-and-swap on holder *and* expiry: a taker that read the lease
    as expired, and lost the race to the holder's renewal, does not steal it."""
    got = leases.try_acquire(vault, "machine:r", "replicate")
    assert isinstance(got, leases.Lease)
    with vault.session() as s, s.begin():
        s.execute(update(LeaseRow).values(expires_at=time.time() - 1))
    with vault.session() as s:
        seen = s.get(LeaseRow, "machine:r")
    assert seen is not None
    with vault.session() as s, s.begin():  # the holder's keeper renews it now
        s.execute(update(LeaseRow).values(expires_at=time.time() + leases.TTL_S))
    with vault.session() as s, s.begin():  # the taker's swap, with what it had read
        swapped = s.connection().execute(
            update(LeaseRow).where(LeaseRow.resource == "machine:r", LeaseRow.holder == seen.holder,
                                   LeaseRow.expires_at == seen.expires_at).values(holder="thief"))
    assert swapped.rowcount == 0
    assert leases.holders(vault, "machine:r")[0].holder == got.holder
    got.release()


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
        s.execute(update(JobRow).where(JobRow.id == job2).values(state="running", holder="nohost:1:x"))
    assert effective_state(get_job(vault, job2), live_jobs(vault)) == "interrupted"
    assert [j.id for j in resumable_jobs(vault)] == [job2]


# ---- processes racing --------------------------------------------------------------------------


def _race_worker(root: str, rounds: int, barrier: Any, results: Any) -> None:
    """One racing process: its own vault connection; each round it waits for the others,
    then tries the round's lease once, and reports whether it won."""
    vault = Vault.open(Path(root))
    try:
        for r in range(rounds):
            for kind in ("fresh", "stale"):
                barrier.wait()
                got = leases.try_acquire(vault, f"machine:{kind}-{r}", "replicate")
                won = isinstance(got, leases.Lease)
                results.put((kind, r, os.getpid(), got.holder if won else None))
        barrier.wait()  # winners keep their leases until every racer is done
    finally:
        vault.close()


def test_processes_racing_for_a_lease_exactly_one_wins(vault: Vault) -> None:
    """Every round: RACERS processes try the same free lease at the same moment, then the
    same stale one (its holder expired); exactly one wins each, every time."""
    with vault.session() as s, s.begin():  # the stale leases: a holder that stopped renewing
        for r in range(RACE_ROUNDS):
            s.execute(insert(LeaseRow).values(resource=f"machine:stale-{r}", holder="gone:1:x",
                                              operation="replicate", detail={}, acquired_at=0.0,
                                              expires_at=time.time() - 60))
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(vault.root), RACE_ROUNDS, barrier, results))
             for _ in range(RACERS)]
    started = time.monotonic()
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(RACERS * RACE_ROUNDS * 2)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    elapsed = time.monotonic() - started
    winners: dict[tuple[str, int], list[str]] = {}
    for kind, r, _pid, holder in outcomes:
        winners.setdefault((kind, r), [])
        if holder:
            winners[(kind, r)].append(holder)
    assert len(winners) == 2 * RACE_ROUNDS
    bad = {k: w for k, w in winners.items() if len(w) != 1}
    assert not bad, f"rounds without exactly one winner: {bad}"
    print(f"\n{vault.engine.dialect.name}: {2 * RACE_ROUNDS} rounds of {RACERS} processes "
          f"in {elapsed:.1f}s, one winner each")


_RUNS = "REHOST_TEST_CLAIM_RUNS"


@plan("claim-race-test")
def _claim_plan(vault: Vault, job: JobRow) -> list[Step]:
    def step(ctx: StepContext) -> str:
        with open(os.environ[_RUNS], "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other runner to arrive while this one holds it
        return "ran"

    return [Step("only", "Only step", step)]


def _claim_worker(root: str, job_id: str, barrier: Any, results: Any) -> None:
    vault = Vault.open(Path(root))
    try:
        barrier.wait()
        try:
            results.put(run_job(vault, job_id).state)
        except InvalidState as e:
            results.put(f"refused: {e}")
    finally:
        vault.close()


def test_two_runners_claim_a_job_once(vault: Vault, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes run the same queued job at the same moment: one runs it, the other is
    refused, and its step runs once."""
    runs = tmp_path / "runs"
    monkeypatch.setenv(_RUNS, str(runs))
    job_id = create_job(vault, "claim-race-test", None, "", {}).id
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(str(vault.root), job_id, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert got[0].startswith("refused: job") and got[1] == "succeeded", got
    assert len(runs.read_text().splitlines()) == 1  # the step ran once
    assert get_job(vault, job_id).state == "succeeded"
