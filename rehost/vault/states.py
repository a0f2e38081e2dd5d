"""The replicated-item state machine (ARCHITECTURE §4), as data: which operation is allowed
in which state, and for every refusal the reason and what to do instead."""

from __future__ import annotations

from enum import StrEnum

from rehost.errors import InvalidState


class ItemState(StrEnum):
    REGISTERED = "registered"
    INITIAL_REPLICATION = "initial_replication"
    PROTECTED = "protected"
    RESYNC_REQUIRED = "resync_required"
    PAUSED = "paused"
    ERROR = "error"
    TEST_FAILOVER = "test_failover"  # a test machine runs; cleanup pending
    FAILOVER_IN_PROGRESS = "failover_in_progress"
    FAILED_OVER = "failed_over"
    MIGRATION_COMPLETED = "migration_completed"


S = ItemState

#: operation -> states in which it is allowed
ALLOWED: dict[str, frozenset[ItemState]] = {
    "replicate": frozenset({S.REGISTERED, S.INITIAL_REPLICATION, S.PROTECTED, S.RESYNC_REQUIRED,
                            S.ERROR, S.TEST_FAILOVER}),
    "test_failover": frozenset({S.PROTECTED, S.RESYNC_REQUIRED}),
    "test_cleanup": frozenset({S.TEST_FAILOVER}),
    "failover": frozenset({S.PROTECTED, S.RESYNC_REQUIRED, S.ERROR}),
    "complete": frozenset({S.FAILED_OVER}),
}

#: (operation, state) -> why not, and what to do; a generic message covers the rest
ADVICE: dict[tuple[str, ItemState], str] = {
    ("replicate", S.FAILOVER_IN_PROGRESS): "a failover is in progress and replication has stopped; "
    "follow it with: rehost jobs",
    ("replicate", S.FAILED_OVER): "the machine has failed over: replication has stopped; "
    "finish with: rehost complete {name}",
    ("replicate", S.MIGRATION_COMPLETED): "the migration of {name} is complete; nothing replicates any more",
    ("replicate", S.PAUSED): "replication of {name} is paused",
    ("test_failover", S.TEST_FAILOVER): "a test failover of {name} is already running; "
    "clean it up first: rehost failover {name} --cleanup",
    ("test_failover", S.REGISTERED): "{name} has no recovery point yet: run rehost replicate {name}",
    ("test_failover", S.INITIAL_REPLICATION): "the initial replication of {name} has not finished: "
    "run rehost replicate {name}",
    ("failover", S.REGISTERED): "{name} has no recovery point yet: run rehost replicate {name}",
    ("failover", S.INITIAL_REPLICATION): "the initial replication of {name} has not finished: "
    "run rehost replicate {name}",
    ("failover", S.TEST_FAILOVER): "a test failover of {name} is still running; "
    "clean it up first: rehost failover {name} --cleanup",
    ("failover", S.FAILOVER_IN_PROGRESS): "a failover of {name} is already in progress; "
    "see rehost jobs, and resume an interrupted one with rehost job resume ID",
    ("failover", S.FAILED_OVER): "{name} has already failed over",
    ("test_cleanup", S.PROTECTED): "there is no test failover of {name} to clean up",
    ("complete", S.PROTECTED): "complete comes after failover: run rehost failover {name} first",
    ("complete", S.REGISTERED): "complete comes after failover: replicate and fail over {name} first",
    ("complete", S.TEST_FAILOVER): "a test failover is not a migration: clean it up, then "
    "rehost failover {name}, then complete",
    ("complete", S.FAILOVER_IN_PROGRESS): "the failover of {name} has not finished: see rehost jobs",
    ("complete", S.MIGRATION_COMPLETED): "the migration of {name} is already complete",
}


def require(operation: str, state: str, name: str, reason: str = "") -> None:
    """Raise InvalidState with the reason and the next step when ``operation`` is not allowed."""
    st = ItemState(state)
    if st in ALLOWED[operation]:
        return
    advice = ADVICE.get((operation, st))
    words = operation.replace("_", " ")
    msg = advice.format(name=name) if advice else f"{words} is not allowed while {name} is {st.value}"
    if reason and st in (S.ERROR, S.RESYNC_REQUIRED, S.PAUSED):
        msg += f" ({reason})"
    raise InvalidState(f"cannot {words} {name}: {msg}")
