"""Replica page blobs against a real Azurite: exact bytes (qemu-img is the oracle), only the
changed pages written, resume after a cut, retries on injected 500/429, no secret leaked."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rehost.errors import BackendError
from rehost.targets.azure.blob import BlobEndpoint, PageBlob
from rehost.targets.azure.pageblob import forget_snapshots, point_snapshots, sync_disk
from rehost.targets.azure.plan import PAGE
from rehost.testkit.azurite import Azurite
from rehost.testkit.faultproxy import FaultProxy
from tests.targets.azure.helpers import MiB, Points, check_replica, key_credential, scatter

SIZE = 24 * MiB + 7 * 512  # not a whole MiB: the replica pads it


def _image(path: Path, seed: int = 1) -> Path:
    """Data in a few regions (one ending off a page boundary), holes elsewhere."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, n in ((0, 3 * MiB), (5 * MiB + 4096, 6 * MiB + 1000), (20 * MiB, 2 * MiB),
                       (SIZE - 9000, 9000)):
            f.seek(off)
            f.write(rng.randbytes(n))
    return path


def _synced(az: Azurite, container: str, tmp_path: Path) -> tuple[Points, PageBlob]:
    """A repository with one point of a fresh image, synced into a new blob."""
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    blob = _blob(az, container)
    sync_disk(pts.repo, pts.cycle(), 0, blob, last=None, journal_dir=tmp_path / "j")
    return pts, blob


def _blob(az: Azurite | FaultProxy, container: str, **kw: object) -> PageBlob:
    url = az.account_url if isinstance(az, Azurite) else f"http://127.0.0.1:{az.port}/devstoreaccount1"
    return PageBlob(BlobEndpoint(url, container, key_credential()), "disk0.vhd", backoff=0.01, **kw)  # type: ignore[arg-type]


def test_sync_writes_only_what_changed(azurite: Azurite, container: str, tmp_path: Path) -> None:
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    a = pts.cycle()
    blob = _blob(azurite, container)
    first = sync_disk(pts.repo, a, 0, blob, last=None, journal_dir=tmp_path / "j")
    data = sum(e.length for e in pts.repo.resolve_map(a, 0) if e.blob)
    assert data <= first.bytes_written <= data + 4 * PAGE + 512  # page edges and the footer
    assert first.pages_cleared == 0 and first.parent is None
    check_replica(blob, pts.repo, a, tmp_path, first.snapshot)
    print(f"\nfirst sync: {first.bytes_written} bytes, {first.requests} requests, {first.seconds}s")

    again = sync_disk(pts.repo, a, 0, blob, last=a, journal_dir=tmp_path / "j")
    assert again.bytes_written == 0 and again.snapshot == first.snapshot

    b = pts.cycle()  # nothing changed on the source
    same = sync_disk(pts.repo, b, 0, blob, last=a, journal_dir=tmp_path / "j")
    assert same.pages_written == 0 and same.pages_cleared == 0 and same.parent == a.id
    assert same.snapshot != first.snapshot

    with open(pts.image, "r+b") as f:  # a region becomes zeros
        f.seek(21 * MiB)
        f.write(bytes(MiB))
    changed = scatter(pts.image, 0.01, seed=3)
    c = pts.cycle()
    delta = sync_disk(pts.repo, c, 0, blob, last=b, journal_dir=tmp_path / "j")
    print(f"1% scattered change: {changed} bytes changed, {delta.bytes_written} written, "
          f"{delta.pages_cleared} pages cleared, {delta.requests} requests, {delta.seconds}s")
    assert changed <= delta.bytes_written <= changed * 1.05
    assert MiB // 2 <= delta.pages_cleared * PAGE <= MiB  # the zeroed MiB, less scattered blocks in it
    check_replica(blob, pts.repo, c, tmp_path, delta.snapshot)
    # Every snapshot still holds its own point.
    check_replica(blob, pts.repo, a, tmp_path, first.snapshot)
    assert set(point_snapshots(blob)) == {a.id, b.id, c.id}
    assert forget_snapshots(blob, {a.id, c.id}) == [b.id]
    assert point_snapshots(blob) == {a.id: first.snapshot, c.id: delta.snapshot}
    check_replica(blob, pts.repo, c, tmp_path)  # the base blob is the newest point


class _CutAfter(PageBlob):
    """The real blob, failing every page write after the first ``n`` (a cut connection)."""

    def __init__(self, *args: object, n: int, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.n = n
        self.puts = 0

    def put(self, offset: int, data: bytes) -> None:
        self.puts += 1
        if self.puts > self.n:
            raise BackendError("injected: connection cut", retryable=True)
        super().put(offset, data)


def test_a_cut_sync_resumes_without_rewriting(azurite: Azurite, container: str, tmp_path: Path) -> None:
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    a = pts.cycle()
    url = azurite.account_url
    cut = _CutAfter(BlobEndpoint(url, container, key_credential()), "disk0.vhd", n=3, backoff=0.01)
    with pytest.raises(BackendError, match="injected"):
        sync_disk(pts.repo, a, 0, cut, last=None, journal_dir=tmp_path / "j", workers=2)
    blob = _blob(azurite, container)
    assert "rehost_syncing" in (blob.state() or pytest.fail("no blob")).metadata
    resumed = sync_disk(pts.repo, a, 0, blob, last=None, journal_dir=tmp_path / "j")
    full = sum(e.length for e in pts.repo.resolve_map(a, 0) if e.blob)
    assert resumed.resumed_skipped >= 3
    assert resumed.bytes_written <= full - 3 * 512 * 1024  # the landed requests (>= 3) not sent again
    check_replica(blob, pts.repo, a, tmp_path, resumed.snapshot)

    # A delta cut, the source changes again, and the next sync goes to the newer point:
    # it first finishes the interrupted target, then syncs on.
    scatter(pts.image, 0.02, seed=5)
    b = pts.cycle()
    cut = _CutAfter(BlobEndpoint(url, container, key_credential()), "disk0.vhd", n=4, backoff=0.01)
    with pytest.raises(BackendError):
        sync_disk(pts.repo, b, 0, cut, last=a, journal_dir=tmp_path / "j", workers=1)
    scatter(pts.image, 0.01, seed=6)
    c = pts.cycle()
    on = sync_disk(pts.repo, c, 0, blob, last=a, journal_dir=tmp_path / "j")
    assert on.resumed_skipped >= 4 and "interrupted sync" in on.note
    check_replica(blob, pts.repo, c, tmp_path, on.snapshot)
    snaps = {md["rehost_point"]: s for s, md in blob.snapshots().items()}
    check_replica(blob, pts.repo, b, tmp_path, snaps[b.id])


@pytest.mark.parametrize("status", [500, 429, 503])
def test_injected_errors_are_retried(azurite: Azurite, container: str, tmp_path: Path, status: int) -> None:
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    a = pts.cycle()
    proxy = FaultProxy(azurite.port, every=3, status=status)
    try:
        report = sync_disk(pts.repo, a, 0, _blob(proxy, container), last=None, journal_dir=tmp_path / "j")
    finally:
        proxy.close()
    assert proxy.failed > 0 and report.retries == proxy.failed
    check_replica(_blob(azurite, container), pts.repo, a, tmp_path, report.snapshot)


def test_retry_after_is_honoured(azurite: Azurite, container: str, tmp_path: Path) -> None:
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    proxy = FaultProxy(azurite.port, every=4, status=429, retry_after=0.5)
    try:
        report = sync_disk(pts.repo, pts.cycle(), 0, _blob(proxy, container), last=None,
                           journal_dir=tmp_path / "j", workers=1)
    finally:
        proxy.close()
    assert proxy.failed >= 1 and report.retries == proxy.failed
    assert report.seconds >= 0.5 * proxy.failed  # the server's wait, not our 10 ms backoff


def test_no_secret_in_logs_errors_or_reports(azurite: Azurite, container: str, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY

    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    a = pts.cycle()
    _blob(azurite, container).create(1024, {})  # the container exists; SAS cannot create it
    rights = ContainerSasPermissions(read=True, write=True, list=True, create=True)
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY, permission=rights,
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    caplog.set_level(logging.DEBUG)
    ok = PageBlob(BlobEndpoint(azurite.account_url, container, sas), "sas.vhd", backoff=0.01)
    report = sync_disk(pts.repo, a, 0, ok, last=None, journal_dir=tmp_path / "j")
    proxy = FaultProxy(azurite.port, every=1, status=503)
    try:
        bad = PageBlob(BlobEndpoint(f"http://127.0.0.1:{proxy.port}/{ACCOUNT}", container, sas), "x.vhd",
                       retries=1, backoff=0.01)
        with pytest.raises(BackendError) as err:
            sync_disk(pts.repo, a, 0, bad, last=None, journal_dir=tmp_path / "j2")
    finally:
        proxy.close()
    wrong = sas.replace(signature, ("B" if signature[0] == "A" else "A") + signature[1:])
    forged = PageBlob(BlobEndpoint(azurite.account_url, container, wrong), "y.vhd", retries=0)
    with pytest.raises(BackendError) as denied:
        forged.state()
    texts = [caplog.text, str(err.value), repr(err.value), str(denied.value), str(report.to_json()),
             repr(ok.endpoint)]
    for text in texts:
        assert signature not in text and signature[1:] not in text
    for text in texts[1:]:
        assert "sig=" not in text
    # The SDK's own request log shows the parameter's name only, value replaced.
    assert caplog.text.count("sig=") == caplog.text.count("sig=REDACTED")


def test_kill_9_during_a_sync_resumes(azurite: Azurite, container: str, tmp_path: Path) -> None:
    pts = Points(tmp_path, _image(tmp_path / "disk.raw"))
    scatter(pts.image, 0.03, seed=8)  # many small requests, to be killed among them
    a = pts.cycle()
    journal = tmp_path / "j"
    code = ("import sys; from tests.targets.azure.helpers import slow_sync_main; "
            "slow_sync_main(*sys.argv[1:])")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "repo"), a.id, azurite.account_url,
                              container, str(journal)], cwd=Path(__file__).parents[3])
    deadline = time.monotonic() + 30
    landed = 0
    while landed < 20 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
        files = list(journal.glob("*.jsonl")) if journal.exists() else []
        landed = len(files[0].read_text().splitlines()) - 1 if files else 0
    assert child.poll() is None, "the sync ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lines = next(journal.glob("*.jsonl")).read_text().splitlines()[1:]
    landed_bytes = sum(json.loads(x)["n"] for x in lines if x.endswith("}"))
    blob = _blob(azurite, container)
    resumed = sync_disk(pts.repo, a, 0, blob, last=None, journal_dir=journal)
    full = sum(e.length for e in pts.repo.resolve_map(a, 0) if e.blob)
    print(f"\nkill -9 after {landed} requests: resume wrote {resumed.bytes_written} of {full} bytes, "
          f"skipped {resumed.resumed_skipped} requests")
    assert resumed.resumed_skipped >= landed
    assert full - landed_bytes <= resumed.bytes_written <= full - landed_bytes + 64 * 1024
    check_replica(blob, pts.repo, a, tmp_path, resumed.snapshot)


def test_a_disk_that_grows_is_rewritten_at_its_new_size(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    pts, blob = _synced(azurite, container, tmp_path)
    a = pts.points[0]
    with open(pts.image, "r+b") as f:  # 3 MiB more, data right after the old end
        f.truncate(SIZE + 3 * MiB)
        f.seek(SIZE)
        f.write(b"\x42" * 8192)
    b = pts.cycle()
    grown = sync_disk(pts.repo, b, 0, blob, last=a, journal_dir=tmp_path / "j")
    assert grown.parent is None  # rewritten whole: the old footer sits inside the new data
    check_replica(blob, pts.repo, b, tmp_path, grown.snapshot)
    # The old point's snapshot keeps its own size and footer.
    check_replica(blob, pts.repo, a, tmp_path, point_snapshots(blob)[a.id])


def test_an_interrupted_target_pruned_meanwhile_means_a_full_rewrite(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    pts, blob = _synced(azurite, container, tmp_path)
    a = pts.points[0]
    scatter(pts.image, 0.05, seed=11)
    b = pts.cycle()
    cut = _CutAfter(BlobEndpoint(azurite.account_url, container, key_credential()), "disk0.vhd", n=2,
                    backoff=0.01)
    with pytest.raises(BackendError):
        sync_disk(pts.repo, b, 0, cut, last=a, journal_dir=tmp_path / "j", workers=1)
    scatter(pts.image, 0.01, seed=12)
    c = pts.cycle()
    pts.repo.forget_point(b.id)  # retention took the point the cut sync was going to
    report = sync_disk(pts.repo, c, 0, blob, last=a, journal_dir=tmp_path / "j")
    assert report.parent is None and report.pages_cleared > 0  # content unknown: every page set
    check_replica(blob, pts.repo, c, tmp_path, report.snapshot)
