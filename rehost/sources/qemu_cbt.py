"""Changed-block tracking and fleecing for source ``qemu``: the QMP half of one cycle.

Why a module of its own: the rules that decide which dirty bitmaps prove what changed since
the parent point are the subtle part of the QEMU source, and they are pure functions of
what QEMU reports (``plan_disk``); the fleecing session (``FleeceSession``) is the QMP
plumbing around them — exports, jobs and temporary nodes that must never outlive a cycle.

Bitmap chain (verified on QEMU 7.2): every cycle's ``transaction`` adds a new bitmap and
disables every enabled rehost bitmap of the machine at the same instant, so the bitmaps form
a chain of contiguous intervals. The parent point records the bitmap that started at its
instant; if rehost died after a transaction and before the commit, newer bitmaps of the same
chain follow it. Their union covers everything since the parent. Names carry the machine and
the sequence of the point whose instant they start at (``rehost-<machine8>-<seq>-<rand>``),
so bitmaps of another vault/machine are never touched and stale ones (older than the parent,
left when a commit's clean-up did not run) are not read, only dropped at the next commit.

What QEMU does to bitmaps (verified): persistent bitmaps survive a clean ``quit`` (enabled
or not); after ``kill -9`` the bitmaps created in that run are gone and those loaded at
start come back ``inconsistent`` (usable only to be removed). Non-persistent bitmaps (raw
or qcow2 v2 disks) vanish with the process. Any of these makes the cycle hash-diff the disk.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehost.disks.extent import Extent
from rehost.disks.qmp import QmpClient, QmpError
from rehost.errors import DiskError, UsageError

PREFIX = "rehost-"
#: Our leftovers wait at most this long to go away (export drain, job cancel).
TEARDOWN_TIMEOUT = 30.0
#: Part of a name that ties it to the machine: first 8 characters of its id, [a-z0-9].
TAG_LEN = 8

_NAME = re.compile(r"^rehost-(?P<tag>[a-z0-9]+)-(?P<seq>\d+)-(?P<rand>[0-9a-f]+)$")


def machine_tag(machine_id: str) -> str:
    """A short name fragment that is a valid QEMU id (node names are limited to 31 chars)."""
    tag = re.sub(r"[^a-z0-9]", "", machine_id.lower())[:TAG_LEN]
    if not tag:
        raise UsageError(f"machine id {machine_id!r} has no usable characters for QEMU names")
    return tag


def bitmap_name(tag: str, sequence: int) -> str:
    """A new bitmap for the point with ``sequence`` (random part: a retry never collides)."""
    return f"{PREFIX}{tag}-{sequence}-{secrets.token_hex(3)}"


def parse_bitmap(name: str, tag: str) -> int | None:
    """The sequence a bitmap of machine ``tag`` starts at, or None if not one of ours."""
    m = _NAME.match(name)
    if m is None or m["tag"] != tag:
        return None
    return int(m["seq"])


@dataclass(frozen=True)
class Bitmap:
    """One entry of QEMU's ``dirty-bitmaps`` list of a node."""

    name: str
    recording: bool
    persistent: bool
    granularity: int
    count: int
    inconsistent: bool = False
    busy: bool = False

    @classmethod
    def from_qmp(cls, d: dict[str, Any]) -> Bitmap:
        return cls(
            name=str(d.get("name", "")), recording=bool(d.get("recording")),
            persistent=bool(d.get("persistent")), granularity=int(d.get("granularity", 0)),
            count=int(d.get("count", 0)), inconsistent=bool(d.get("inconsistent")),
            busy=bool(d.get("busy")),
        )


@dataclass
class DiskPlan:
    """What one cycle does with one disk's bitmaps (decided before the transaction).

    ``union``: bitmaps whose dirty ranges together cover everything since the parent
    (None: unknown, hash-diff). ``disable``: our enabled bitmaps, disabled at the instant.
    ``remove_now``: inconsistent bitmaps of ours (useless, and they block nothing else).
    ``note``: why the disk falls back to a hash-diff, for the item's state.
    """

    index: int
    node: str
    new: str
    union: list[str] | None
    disable: list[str]
    remove_now: list[str]
    note: str | None = None


def plan_disk(
    index: int,
    node: str,
    bitmaps: Sequence[Bitmap],
    *,
    tag: str,
    new: str,
    parent_bitmap: str | None,
    parent_sequence: int | None,
    persistent: bool = True,
) -> DiskPlan:
    """Decide which bitmaps prove the changes of disk ``index`` since the parent point.

    ``parent_bitmap`` is the name the parent recorded (None with no parent, or a parent
    from another source kind); ``parent_sequence`` the parent's sequence (None: no parent).
    """
    ours = [b for b in bitmaps if parse_bitmap(b.name, tag) is not None]
    bad = [b for b in ours if b.inconsistent]
    good = {b.name: b for b in ours if not b.inconsistent}
    plan = DiskPlan(
        index, node, new, None,
        disable=[b.name for b in good.values() if b.recording],
        remove_now=[b.name for b in bad],
    )
    if parent_sequence is None:
        return plan  # initial copy: everything is read anyway
    why_lost = (
        "" if persistent else " (the disk is not qcow2 v3, so its bitmaps cannot persist)"
    )
    if parent_bitmap is None:
        plan.note = f"disk {index}: the parent point recorded no dirty bitmap: resynced by hash-diff"
    elif parent_bitmap in {b.name for b in bad}:
        plan.note = (
            f"disk {index}: dirty bitmap {parent_bitmap} is inconsistent (QEMU stopped uncleanly?)"
            ": removed, resynced by hash-diff"
        )
    elif parent_bitmap not in good:
        plan.note = (
            f"disk {index}: dirty bitmap {parent_bitmap} missing (QEMU restarted?){why_lost}"
            ": resynced by hash-diff"
        )
    else:
        later = [
            n for n in good
            if n != parent_bitmap and (parse_bitmap(n, tag) or 0) > parent_sequence
        ]
        union = [parent_bitmap, *sorted(later)]
        if not any(good[n].recording for n in union):
            # Every transaction leaves exactly one of ours enabled; none means someone
            # disabled or removed part of the chain, and a gap may hide writes.
            plan.note = (
                f"disk {index}: no dirty bitmap is recording since {parent_bitmap} (chain broken)"
                ": resynced by hash-diff"
            )
        else:
            plan.union = union
    return plan


def union_extents(lists: Iterable[Iterable[Extent]]) -> list[Extent]:
    """Sorted, merged (overlapping or touching) extents of several dirty lists."""
    spans = sorted((e.start, e.end) for extents in lists for e in extents if e.length > 0)
    out: list[Extent] = []
    cur: list[int] | None = None
    for a, b in spans:
        if cur is not None and a <= cur[1]:
            cur[1] = max(cur[1], b)
            continue
        if cur is not None:
            out.append(Extent(cur[0], cur[1] - cur[0]))
        cur = [a, b]
    if cur is not None:
        out.append(Extent(cur[0], cur[1] - cur[0]))
    return out


# --------------------------------------------------------------------------------------------
# QMP helpers


def node_bitmaps(qmp: QmpClient) -> dict[str, list[Bitmap]]:
    """node name -> its dirty bitmaps (read from the nodes, not the devices: a running
    backup job puts a filter on top of the device's node)."""
    out: dict[str, list[Bitmap]] = {}
    for n in qmp.execute("query-named-block-nodes", {"flat": True}):
        out[str(n["node-name"])] = [Bitmap.from_qmp(b) for b in n.get("dirty-bitmaps") or []]
    return out


def _wait_gone(qmp: QmpClient, what: str, query: str, key: str, ids: set[str]) -> None:
    deadline = time.monotonic() + TEARDOWN_TIMEOUT
    while True:
        present = {str(x.get(key)) for x in qmp.execute(query)} & ids
        if not present:
            return
        if time.monotonic() > deadline:
            raise QmpError(f"{what} {', '.join(sorted(present))} still present after {TEARDOWN_TIMEOUT:.0f}s")
        time.sleep(0.02)


def delete_exports(qmp: QmpClient, ids: Iterable[str]) -> None:
    """Drop NBD exports (``hard``: our own client may be gone without saying so) and wait
    until QEMU lets go of them — their bitmaps stay busy until then."""
    wanted = set(ids)
    present = {str(e["id"]) for e in qmp.execute("query-block-exports")} & wanted
    for export_id in sorted(present):
        with contextlib.suppress(QmpError):  # already shutting down
            qmp.execute("block-export-del", {"id": export_id, "mode": "hard"})
    _wait_gone(qmp, "export", "query-block-exports", "id", present)


def cancel_jobs(qmp: QmpClient, ids: Iterable[str]) -> None:
    """Cancel sync-none backup jobs (nothing to lose: they only copied old data aside)."""
    wanted = set(ids)
    present = {str(j["device"]) for j in qmp.execute("query-block-jobs")} & wanted
    for job in sorted(present):
        with contextlib.suppress(QmpError):
            qmp.execute("block-job-cancel", {"device": job, "force": True})
    _wait_gone(qmp, "block job", "query-block-jobs", "device", present)
    # A job that concluded without auto-dismiss would keep its id: dismiss it.
    for j in qmp.execute("query-jobs"):
        if str(j.get("id")) in wanted and j.get("status") == "concluded":
            with contextlib.suppress(QmpError):
                qmp.execute("job-dismiss", {"id": j["id"]})


def delete_nodes(qmp: QmpClient, names: Iterable[str]) -> list[Path]:
    """``blockdev-del`` our fleece nodes; returns their files (for the caller to delete)."""
    wanted = set(names)
    files: list[Path] = []
    for n in qmp.execute("query-named-block-nodes", {"flat": True}):
        if n["node-name"] in wanted:
            files.append(_image_file(str(n.get("file", ""))))
            qmp.execute("blockdev-del", {"node-name": n["node-name"]})
    return files


def _image_file(filename: str) -> Path:
    """The qcow2 file of a fleece node. QEMU names a node whose backing was given at
    ``blockdev-add`` time ``json:{..., "file": {"filename": PATH}}``."""
    if filename.startswith("json:"):
        with contextlib.suppress(ValueError, AttributeError):
            return Path(str(json.loads(filename[5:])["file"]["filename"]))
    return Path(filename)


def remove_bitmaps(qmp: QmpClient, node: str, names: Iterable[str]) -> list[str]:
    """Remove bitmaps; returns the ones that could not be removed, with the reason."""
    failed = []
    for name in names:
        try:
            qmp.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
        except QmpError as exc:
            failed.append(f"{name}: {exc}")
    return failed


# --------------------------------------------------------------------------------------------
# the fleecing session


@dataclass
class FleeceSession:
    """Temporary QEMU objects of one cycle, all named ``rehost-<tag>-...``.

    ``prepare`` creates fleece nodes (a qcow2 overlay whose backing is the live disk: a
    ``blockdev-backup sync=none`` into it copies old data aside before the guest
    overwrites it, so reading the overlay gives the transaction's instant), ``export``
    publishes one over NBD. ``teardown`` undoes everything in reverse and is safe to call
    twice; ``clean_leftovers`` undoes what a killed rehost left in QEMU.
    """

    qmp: QmpClient
    tag: str
    workdir: Path
    socket: Path = field(init=False)
    nodes: dict[int, str] = field(default_factory=dict)
    jobs: dict[int, str] = field(default_factory=dict)
    exports: dict[int, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    server_started: bool = False

    def __post_init__(self) -> None:
        self.socket = self.workdir / "nbd.sock"

    def name(self, kind: str, index: int) -> str:
        return f"{PREFIX}{self.tag}-{kind}{index}"

    def _ours(self, name: str) -> bool:
        return name.startswith(f"{PREFIX}{self.tag}-") and parse_bitmap(name, self.tag) is None

    def clean_leftovers(self) -> list[str]:
        """Exports, jobs and fleece nodes of this machine left by a rehost that died."""
        found: list[str] = []
        q = self.qmp.execute
        exports = [str(e["id"]) for e in q("query-block-exports") if self._ours(str(e["id"]))]
        jobs = [str(j["device"]) for j in q("query-block-jobs") if self._ours(str(j["device"]))]
        nodes = [
            str(n["node-name"]) for n in q("query-named-block-nodes", {"flat": True})
            if self._ours(str(n["node-name"]))
        ]
        if exports:
            delete_exports(self.qmp, exports)
        if jobs:
            cancel_jobs(self.qmp, jobs)
        for f in delete_nodes(self.qmp, nodes):
            _remove_file(f)
        found += exports + jobs + nodes
        return found

    def start_server(self) -> None:
        """Start QEMU's NBD server on our private socket.

        QEMU has one NBD server. If it already runs and serves nothing (a rehost that was
        killed), restart it on our socket; if it serves someone else's exports, stop: we
        must not cut off another backup tool.
        """
        addr = {"type": "unix", "data": {"path": str(self.socket)}}
        try:
            self.qmp.execute("nbd-server-start", {"addr": addr})
        except QmpError as exc:
            if "already running" not in str(exc):
                raise
            others = [str(e["id"]) for e in self.qmp.execute("query-block-exports")]
            if others:
                raise UsageError(
                    f"QEMU's NBD server is in use by exports {', '.join(others)} (another backup "
                    "or replication tool?): retry when it is done"
                ) from None
            self.qmp.execute("nbd-server-stop")
            self.qmp.execute("nbd-server-start", {"addr": addr})
        self.server_started = True

    def prepare(self, index: int, node: str, size: int) -> str:
        """Create the fleece overlay for disk ``index`` (QEMU's ``node`` as backing)."""
        name = self.name("fleece", index)
        path = self.workdir / f"{name}.qcow2"
        r = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise DiskError(f"cannot create fleece image {path}: {r.stderr.strip()}")
        self.files.append(path)
        self.qmp.execute("blockdev-add", {
            "driver": "qcow2", "node-name": name, "backing": node,
            "file": {"driver": "file", "filename": str(path)},
        })
        self.nodes[index] = name
        return name

    def backup_action(self, index: int, node: str) -> dict[str, Any]:
        """The transaction action that starts copy-before-write into the fleece node."""
        job = self.name("job", index)
        self.jobs[index] = job
        return {"type": "blockdev-backup",
                "data": {"device": node, "target": self.nodes[index], "sync": "none", "job-id": job}}

    def export(self, index: int, bitmaps: Sequence[str]) -> str:
        """Export the fleece node read-only; ``bitmaps`` live on its backing (the disk)."""
        name = self.name("export", index)
        self.qmp.execute("block-export-add", {
            "type": "nbd", "id": name, "name": name, "node-name": self.nodes[index],
            "writable": False, "bitmaps": list(bitmaps),
        })
        self.exports[index] = name
        return name

    def teardown(self) -> list[str]:
        """Undo everything in reverse order; returns problems (the next cycle retries)."""
        problems: list[str] = []
        steps = (
            ("exports", lambda: delete_exports(self.qmp, self.exports.values())),
            ("jobs", lambda: cancel_jobs(self.qmp, self.jobs.values())),
            ("fleece nodes", lambda: delete_nodes(self.qmp, self.nodes.values())),
        )
        for what, step in steps:
            try:
                step()
            except QmpError as exc:
                problems.append(f"cleaning up {what}: {exc}")
        self.exports.clear()
        self.jobs.clear()
        self.nodes.clear()
        if self.server_started:
            try:
                self.qmp.execute("nbd-server-stop")
            except QmpError as exc:
                problems.append(f"stopping the NBD server: {exc}")
            self.server_started = False
        for f in self.files:
            _remove_file(f)
        self.files.clear()
        self.socket.unlink(missing_ok=True)
        return problems


def _remove_file(path: Path) -> None:
    """Delete a fleece file of ours and its temporary directory once empty."""
    if not path.name.startswith(PREFIX) or path.suffix != ".qcow2":
        return  # never delete anything we did not name
    path.unlink(missing_ok=True)
    parent = path.parent
    if parent.name.startswith("rehost-qemu-"):
        with contextlib.suppress(OSError):
            (parent / "nbd.sock").unlink(missing_ok=True)
            parent.rmdir()


def make_workdir(base: Path | None) -> Path:
    """A private directory (under ``base``) for the NBD socket and the fleece files.

    /tmp by default: UNIX socket paths are limited to 107 bytes. The fleece files grow by
    what the guest overwrites while a cycle reads, so a busy VM wants ``base`` on a file
    system with room — and one QEMU can write to (same user, same mount namespace).
    """
    base = Path(base) if base is not None else Path("/tmp")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="rehost-qemu-", dir=base))
    if len(str(path / "nbd.sock")) > 107:
        shutil.rmtree(path, ignore_errors=True)
        raise UsageError(f"workdir {base} is too deep for a UNIX socket path (107 bytes): use a shorter one")
    return path


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
