"""The resume journal on its own: what it trusts and what it throws away."""

from __future__ import annotations

from pathlib import Path

from rehost.replication.resume import ResumeJournal
from rehost.repository.manifest import MapEntry

D1, D2 = b"\x01" * 2048, b"\x02" * 2048
E = [MapEntry(0, 4096, "b1"), MapEntry(4096, 4096, None)]


def test_reuse_only_what_matches_and_was_stored(tmp_path: Path) -> None:
    j = ResumeJournal(tmp_path, "m", "p1")
    j.record(0, 0, D1, E, 8192)
    j.record(0, 1 << 20, D2, [MapEntry(1 << 20, 4096, "b2")], 4096)
    j.close()
    again = ResumeJournal(tmp_path, "m", "p1")
    assert again.lookup(0, 0, D1, {"b1"}) == (E, 8192)
    assert again.lookup(0, 0, D2, {"b1"}) is None  # the source's data changed since
    assert again.lookup(1, 0, D1, {"b1"}) is None  # another disk
    assert again.lookup(0, 1 << 20, D2, {"b1"}) is None  # sealed, never stored (killed before the pack)
    assert ResumeJournal.pending(tmp_path, "m", "p1")
    assert not ResumeJournal.pending(tmp_path, "m", "p2")  # another parent: nothing to resume


def test_torn_line_and_other_parent(tmp_path: Path) -> None:
    j = ResumeJournal(tmp_path, "m", None)
    j.record(0, 0, D1, E, 8192)
    j.close()
    with open(j.path, "a") as f:
        f.write('{"d":0,"o":104')  # killed mid-line
    assert ResumeJournal(tmp_path, "m", None).lookup(0, 0, D1, {"b1"}) == (E, 8192)
    other = ResumeJournal(tmp_path, "m", "p9")
    assert not other.chunks
    other.record(0, 0, D2, [], 0)  # a cycle from another parent starts the journal over
    other.close()
    assert not ResumeJournal.pending(tmp_path, "m", None)
    other.discard()
    assert not j.path.exists()
