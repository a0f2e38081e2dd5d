"""The OVF and VMX parsers under atheris for a bounded time: no exception but their own clear
error, no hang, no crash. Seeded with the real descriptors of tests/disks/real_ovf."""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_parsers.py")
REAL = Path(__file__).resolve().parent.parent / "disks" / "real_ovf"
REPO = Path(__file__).resolve().parent.parent.parent
#: seconds of fuzzing; CI's whole budget for this test is about a minute
SECONDS = 55


def seed_corpus(folder: Path) -> Path:
    """Real descriptors, each behind the byte that picks its parser (see fuzz_parsers)."""
    folder.mkdir()
    for i, p in enumerate(sorted((REAL / "ovf").glob("*.ovf"))):
        if p.stat().st_size < 64 << 10:
            (folder / f"ovf-{i}").write_bytes(b"\x00" + p.read_bytes())
    for i, p in enumerate(sorted((REAL / "vmx").glob("*.vmx"))):
        (folder / f"vmx-{i}").write_bytes(b"\x01" + p.read_bytes())
    for i, p in enumerate(sorted(REAL.parent.glob("*.ova"))):
        (folder / f"ova-{i}").write_bytes(b"\x03" + p.read_bytes())
    (folder / "ova-tiny").write_bytes(b"\x03" + tiny_ova())
    (folder / "gzip").write_bytes(b"\x04" + gzip.compress(b"KDMV" + bytes(600)) + gzip.compress(b"x"))
    for i in range(16):  # splices of real descriptors: seed, target and value picked by the bytes
        (folder / f"splice-{i}").write_bytes(bytes([2, i * 16, i * 7, i % 2, 5]) + b"2^99999")
    return folder


def tiny_ova() -> bytes:
    """A real descriptor in a tar, as ovftool lays one out, with a small disk member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("x.ovf", (REAL / "ovf" / "comp002.ovf").read_bytes()),
                           ("comp002-disk1.vmdk.gz", b"\x1f\x8b" + bytes(100))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.slow
def test_parsers_survive_the_fuzzer(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (dev extra) runs the fuzzer")
    seeds = seed_corpus(tmp_path / "seeds")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    p = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={SECONDS}", "-max_len=65536",
         "-timeout=10", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(corpus), str(seeds)],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=REPO)
    found = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    seed = next((line for line in p.stderr.splitlines() if "Seed:" in line), "no seed printed")
    assert p.returncode == 0 and not found, (  # the seed replays the run (-seed=N), not its last input only
        f"the fuzzer found an input the parsers do not refuse cleanly ({found}; {seed}):\n{p.stderr[-4000:]}")
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", p.stderr)
    assert runs and int(runs[1]) > 1000, p.stderr[-2000:]
