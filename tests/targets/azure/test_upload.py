"""The uploader: a whole point into a new page blob from the extent stream, Put Page only."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rehost.targets.azure.blob import BlobEndpoint, PageBlob
from rehost.targets.azure.plan import MAX_PUT, PAGE
from rehost.targets.azure.upload import page_writes, upload_disk
from rehost.targets.azure.vhd import FOOTER_SIZE, padded_size
from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.targets.azure.helpers import MiB, Points, check_replica, key_credential, scatter


def test_page_writes_rebuild_the_disk() -> None:
    rng = random.Random(2)
    for _ in range(30):
        size = rng.randrange(1, 40) * 4096 * 64 + rng.choice([0, 512, 3584])
        disk = bytearray(size)
        extents: list[tuple[int, int, bytes | None]] = []
        pos = 0
        while pos < size:
            n = min(size - pos, rng.choice([1, 100, 511, 4096, MiB, 5 * MiB // 3]))
            if rng.random() < 0.5:
                data = rng.randbytes(n)
                disk[pos : pos + n] = data
                extents.append((pos, n, data))
            else:
                extents.append((pos, n, None))
            pos += n
        out = bytearray(-(-size // PAGE) * PAGE)
        for off, chunk in page_writes(extents, size):
            assert off % PAGE == 0 and len(chunk) % PAGE == 0 and 0 < len(chunk) <= MAX_PUT
            assert off + len(chunk) <= len(out)
            out[off : off + len(chunk)] = chunk
        assert bytes(out[:size]) == bytes(disk)


def test_upload_a_point_through_a_blob_sas(azurite: Azurite, container: str, tmp_path: Path) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(10 * MiB + 3 * 512)
    scatter(image, 0.2, seed=1)
    pts = Points(tmp_path, image)
    a = pts.cycle()
    size = a.disks[0].size
    # As Azure's upload flow: the disk exists at its upload size, a write-only SAS to fill it.
    PageBlob(BlobEndpoint(azurite.account_url, container, key_credential()), "md.vhd").create(
        padded_size(size) + FOOTER_SIZE, {})
    sas = generate_blob_sas(ACCOUNT, container, "md.vhd", account_key=ACCOUNT_KEY,
                            permission=BlobSasPermissions(write=True),
                            expiry=datetime.now(UTC) + timedelta(hours=1))
    blob = PageBlob.from_url(f"{azurite.account_url}/{container}/md.vhd?{sas}", backoff=0.01)
    report = upload_disk(blob, size, pts.repo.iter_disk(a, 0))
    data = sum(e.length for e in pts.repo.resolve_map(a, 0) if e.blob)
    assert data <= report.bytes_written <= data + FOOTER_SIZE + 2 * PAGE
    assert "sig" not in str(report.to_json()) and "?" not in report.blob
    check_replica(PageBlob(BlobEndpoint(azurite.account_url, container, key_credential()), "md.vhd"),
                  pts.repo, a, tmp_path)
