"""Damaged repositories: ``check`` names what is broken, exports fail loudly, never lie."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.cli_helpers import rehost

MiB = 1 << 20


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.raw"
    rng = random.Random(3)
    with open(disk, "wb") as f:
        for _ in range(40):
            f.write(rng.randbytes(MiB))
    v = tmp_path / "vault"
    rehost(v, "init")
    rehost(v, "source", "add-image", "vm", str(disk))
    rehost(v, "replicate", "vm")
    assert rehost(v, "check", "--read-data").code == 0
    return v


def _packs(vault: Path) -> list[Path]:
    return sorted(p for p in (vault / "repo" / "data").rglob("*") if p.is_file())


def _writable(p: Path) -> None:
    os.chmod(p, 0o644)


def _export_fails(vault: Path, tmp: Path) -> str:
    out = tmp / "out.raw"
    r = rehost(vault, "export", "vm", "--output", str(out), check=False)
    assert r.code != 0
    assert not out.exists()  # no plausible-looking wrong image is left behind
    assert not list(tmp.glob(".out.raw*"))
    return r.err


def test_flipped_byte_in_a_pack(vault: Path, tmp_path: Path) -> None:
    pack = _packs(vault)[0]
    _writable(pack)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    pack.write_bytes(bytes(data))
    assert rehost(vault, "check").code == 0  # references are intact: only reading finds it
    r = rehost(vault, "check", "--read-data", check=False)
    assert r.code != 0
    assert pack.name[:12] in r.err and "damaged" in r.err
    assert "point " in r.err  # which points it affects
    assert "damaged" in _export_fails(vault, tmp_path)


def test_truncated_pack(vault: Path, tmp_path: Path) -> None:
    pack = _packs(vault)[0]
    _writable(pack)
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size // 2)
    r = rehost(vault, "check", check=False)  # found without reading data
    assert r.code != 0 and f"pack {pack.name[:12]} is truncated" in r.err
    _export_fails(vault, tmp_path)


def test_missing_index_file(vault: Path, tmp_path: Path) -> None:
    index = sorted((vault / "repo" / "index").iterdir())[0]
    index.unlink()
    r = rehost(vault, "check", check=False)
    assert r.code != 0
    assert "not in any index" in r.err
    assert "not referenced by any index" in r.err  # the orphaned pack is named too
    assert "not in the index" in _export_fails(vault, tmp_path)


def test_missing_pack(vault: Path, tmp_path: Path) -> None:
    pack = _packs(vault)[-1]
    pack.unlink()
    r = rehost(vault, "check", check=False)
    assert r.code != 0 and f"pack {pack.name[:12]} is in the index but missing" in r.err
    assert "missing" in _export_fails(vault, tmp_path)
