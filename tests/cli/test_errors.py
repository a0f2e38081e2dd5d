"""Bad input: one clear line on stderr, a non-zero exit, and the vault exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.cli_helpers import rehost

MiB = 1 << 20


def _fingerprint(vault: Path) -> dict[str, str]:
    """Every repository object and the machine inventory (SQLite files churn on open)."""
    files = {str(p.relative_to(vault)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((vault / "repo").rglob("*")) if p.is_file()}
    machines = rehost(vault, "machines", "--json").json()
    for m in machines:
        m.pop("health", None)  # the RPO grows with the clock; everything else must not move
    files["machines"] = repr(machines)
    return files


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x01" * 65536)
    v = tmp_path / "vault"
    rehost(v, "init")
    rehost(v, "source", "add-image", "vm", str(disk))
    rehost(v, "replicate", "vm")
    return v


def _fails_cleanly(vault: Path, *args: str, match: str, env: dict[str, str] | None = None) -> None:
    before = _fingerprint(vault)
    r = rehost(vault, *args, check=False, env=env)
    assert r.code != 0, r.out
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("rehost: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in r.err
    assert _fingerprint(vault) == before


def test_missing_file(vault: Path, tmp_path: Path) -> None:
    _fails_cleanly(vault, "source", "add-image", "b", str(tmp_path / "nope.qcow2"), match="no such file")


def test_not_a_disk_image(vault: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a disk\n")
    _fails_cleanly(vault, "source", "add-image", "b", str(text), match="not a disk image")
    fake = tmp_path / "fake.vmdk"
    fake.write_bytes(b"\0" * 4096)
    _fails_cleanly(vault, "source", "add-image", "b", str(fake), match="VMDK")


def test_unknown_machine_and_point(vault: Path, tmp_path: Path) -> None:
    _fails_cleanly(vault, "replicate", "ghost", match="no machine named 'ghost'")
    _fails_cleanly(vault, "points", "ghost", match="no machine named 'ghost'")
    _fails_cleanly(vault, "export", "vm", "--point", "deadbeef", "--output", str(tmp_path / "o"),
                   match="no recovery point 'deadbeef'")
    _fails_cleanly(vault, "export", "vm", "--disk", "7", "--output", str(tmp_path / "o"), match="no disk 7")


def test_duplicate_and_invalid_names(vault: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _fails_cleanly(vault, "source", "add-image", "vm", str(disk), match="already registered")
    _fails_cleanly(vault, "source", "add-image", "../evil", str(disk), match="not valid")


def test_export_never_overwrites(vault: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    _fails_cleanly(vault, "export", "vm", "--output", str(target), match="already exists")
    assert target.read_text() == "keep me"


def test_no_vault(tmp_path: Path) -> None:
    r = rehost(tmp_path / "nothing", "machines", check=False)
    assert r.code != 0 and "no vault at" in r.err and "init" in r.err
    assert not (tmp_path / "nothing").exists()


def test_encrypted_vault_and_wrong_password(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * MiB)
        f.write(b"secret payroll data " * 1000)
    v = tmp_path / "enc"
    good = {"REHOST_PASSWORD": "s3cret-pass"}
    rehost(v, "init", "--encrypt", env=good)
    rehost(v, "source", "add-image", "vm", str(disk), env=good)
    rehost(v, "replicate", "vm", env=good)
    for p in (v / "repo").rglob("*"):
        if p.is_file():
            assert b"secret payroll" not in p.read_bytes()
    before = {str(p): p.read_bytes() for p in (v / "repo").rglob("*") if p.is_file()}
    r = rehost(v, "replicate", "vm", env={"REHOST_PASSWORD": "wrong"}, check=False)
    assert r.code != 0 and r.err.strip() == "rehost: error: wrong password for the vault's repository key"
    assert "s3cret" not in r.err and "wrong" not in r.out
    r = rehost(v, "points", "vm", check=False)  # no password at all, no terminal
    assert r.code != 0 and "REHOST_PASSWORD" in r.err
    assert {str(p): p.read_bytes() for p in (v / "repo").rglob("*") if p.is_file()} == before
    out = tmp_path / "out.raw"
    rehost(v, "export", "vm", "--output", str(out), env=good)
    assert out.read_bytes() == disk.read_bytes()
    assert rehost(v, "check", "--read-data", env=good).code == 0


def test_fingerprints_print_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """A fingerprint with ":CD:" in it once printed as a disc emoji, and agents refused to
    register with what the operator copied (seen in CI)."""
    from rehost.cli.source_cmd import _print_invitation
    from rehost.sources.physical import Invitation

    fingerprint = "AB:CD:EF:01:SOS:UP:" + "CD:" * 28 + "FF"
    _print_invitation(Invitation("srv1", "abc-def", fingerprint, 3600), "https://h:8744")
    printed = capsys.readouterr().out
    assert f"server fingerprint: {fingerprint}\n" in printed
    assert f"--fingerprint {fingerprint} --disk" in printed
