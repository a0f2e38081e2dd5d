"""The agents' CA in the vault's database (rehost.vault.agent_ca): one CA for every folder of
a fleet, its keys sealed, an old vault's CA files imported once, changes that race kept."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.agent.register import register
from rehost.agent.tls import csr_pem, new_key
from rehost.testkit.postgres import Postgres
from rehost.testkit.seaweedfs import SeaweedFS
from rehost.vault import agents
from rehost.vault.models import AgentCARow
from rehost.vault.vault import Vault

PASSWORD = "correct horse battery staple"


def _files_with_a_key(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes())


@pytest.fixture
def fleet(postgres: Postgres, seaweedfs: SeaweedFS, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vault, Vault]]:
    """Two folders of one encrypted fleet vault: PostgreSQL state, an s3 repository."""
    for k, v in {**postgres.env(), **seaweedfs.env, "REHOST_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(k, v)
    database = postgres.create_database(f"ca_{secrets.token_hex(4)}")
    bucket = seaweedfs.create_bucket("ca-" + secrets.token_hex(4))
    urls = {"database": database, "repository": f"s3://{bucket}/v?endpoint={seaweedfs.endpoint}"}
    a = Vault.init(tmp_path / "host-a", password=PASSWORD, **urls)
    b = Vault.init(tmp_path / "host-b", password=PASSWORD, join=True, **urls)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_every_folder_of_a_fleet_uses_one_ca(fleet: tuple[Vault, Vault], tmp_path: Path) -> None:
    a, b = fleet
    ca_a, ca_b = agents.authority(a), agents.authority(b)
    assert ca_a.server_fingerprint == ca_b.server_fingerprint
    # a passphrase issued on one host is spent by an enrollment that reaches the other
    passphrase = ca_a.issue_passphrase("web1")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"x" * 65536)
    with EnrollmentServer(ca_b) as server:
        config = register(tmp_path / "agent", server.url, passphrase, ca_b.server_fingerprint, [str(disk)])
    assert config.machine == "web1"
    enrolled = ca_a.machine("web1")
    assert enrolled is not None
    # a revocation on one host holds on the other
    serial = ca_b.revoke("web1")
    assert serial == int(enrolled["serial"]) and ca_a.is_revoked(serial) and ca_a.machine("web1") is None
    # the CA's key is in no folder; the database holds the keys sealed (an encrypted vault)
    for v in (a, b):
        assert not (v.root / "agents" / "ca-key.pem").exists()
        assert _files_with_a_key(v.root / "agents") == ["server-key.pem"]  # TLS reads it by path
    with a.session() as s:
        rows = {r.name: r.data for r in s.scalars(select(AgentCARow))}
    assert set(rows) == {"ca-key", "ca-cert", "server-key", "server-cert", "state"}
    assert b"PRIVATE KEY" not in rows["ca-key"] and b"PRIVATE KEY" not in rows["server-key"]
    assert passphrase.encode() not in rows["state"]


def test_an_old_vaults_ca_files_are_imported_once(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    try:
        folder = vault.root / "agents"
        old = CertificateAuthority(folder)  # the files a vault kept before schema 0007
        old.enroll(old.issue_passphrase("db1"), csr_pem(new_key(), "db1"))
        waiting = old.issue_passphrase("web1")  # issued, not yet used by its agent
        fingerprint = old.server_fingerprint

        ca = agents.authority(vault)
        assert ca.server_fingerprint == fingerprint and ca.machine("db1") is not None
        assert not (folder / "ca-key.pem").exists() and not (folder / "state.json").exists()
        assert ca.enroll(waiting, csr_pem(new_key(), "web1")).machine == "web1"  # still valid
        again = agents.authority(vault)  # imported once: the database is the CA from now on
        assert again.server_fingerprint == fingerprint and set(again.machines()) == {"db1", "web1"}
    finally:
        vault.close()


def test_changes_made_at_once_are_all_kept(tmp_path: Path) -> None:
    """Each change is a compare-and-swap on the state's version: none overwrites another."""
    vault = Vault.init(tmp_path / "v")
    try:
        agents.authority(vault)
        errors: list[BaseException] = []

        def issue(n: int) -> None:
            try:
                ca = agents.authority(vault)
                for i in range(10):
                    ca.issue_passphrase(f"m{n}-{i}")
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=issue, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        state = agents.authority(vault).store.read_state()
        assert len(state["passphrases"]) == 40
    finally:
        vault.close()
