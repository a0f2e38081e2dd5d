"""A vault: one folder holding state (SQLite) and the replica repository (design §2).

The embedded default needs no server: ``vault.json`` names the state database and the
repository by URL, so a vault at scale is the same code with other URLs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from rehost.errors import AlreadyExists, NotFound, UsageError
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.storage import Storage, open_storage
from rehost.vault import schema

CONFIG = "vault.json"
VERSION = 1


class Vault:
    def __init__(self, root: Path, config: dict[str, object], password: Callable[[], str] | None) -> None:
        self.root = root
        self.config = config
        self._password = password
        self._repo: Repository | None = None
        #: the password that unlocked the repository, for daemons this process starts
        self.unlocked_password: str | None = None
        self.engine: Engine = create_engine(self._url(str(config["state"])))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin_immediate)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.cache = DigestCache(root / "cache")

    def _url(self, url: str) -> str:
        return url.replace("sqlite:///./", f"sqlite:///{self.root}/")

    @classmethod
    def init(cls, root: Path, *, password: str | None = None) -> Vault:
        """Create a vault; refuses a folder that is already a vault or is not empty."""
        root = Path(root)
        if (root / CONFIG).exists():
            raise AlreadyExists(f"{root} is already a vault")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UsageError(f"{root} exists and is not an empty folder; choose a new path")
        config: dict[str, object] = {
            "version": VERSION,
            "state": "sqlite:///./vault.db",
            "repository": "local:./repo",
        }
        root.mkdir(parents=True, exist_ok=True)
        try:
            vault = cls(root, config, (lambda: password) if password is not None else None)
            schema.upgrade(vault.engine)
            Repository.create(vault._storage(create=True), password=password)
            tmp = root / (CONFIG + ".tmp")
            tmp.write_text(json.dumps(config, indent=2) + "\n")
            os.replace(tmp, root / CONFIG)  # the vault exists once this file does
        except BaseException:
            _remove_partial(root)
            raise
        return vault

    @classmethod
    def open(cls, root: Path, password: Callable[[], str] | None = None) -> Vault:
        root = Path(root)
        try:
            config = json.loads((root / CONFIG).read_text())
        except FileNotFoundError:
            raise NotFound(f"no vault at {root} (create one with: rehost --vault {root} init)") from None
        except ValueError as e:
            raise UsageError(f"{root / CONFIG} is damaged: {e}") from None
        if config.get("version") != VERSION:
            raise UsageError(f"vault format {config.get('version')} is not supported")
        vault = cls(root, config, password)
        schema.upgrade(vault.engine)
        return vault

    def _storage(self, *, create: bool = False) -> Storage:
        url = str(self.config["repository"])
        if url.startswith("local:./"):
            url = "local:" + str(self.root / url[len("local:./") :])
        return open_storage(url, create=True) if create else open_storage(url)

    @property
    def repo(self) -> Repository:
        """The repository, opened (and its key unlocked) on first use."""
        if self._repo is None:
            self._repo = Repository.open(self._storage(), self._password and self._remember_password)
        return self._repo

    def _remember_password(self) -> str:
        assert self._password is not None
        self.unlocked_password = self._password()
        return self.unlocked_password

    def session(self) -> Session:
        return self.sessions()

    def beat(self) -> None:
        """The scheduler says it is alive (health tells "no scheduler running" otherwise)."""
        path = self.root / "run" / "scheduler.heartbeat"
        path.parent.mkdir(exist_ok=True)
        path.write_text(datetime.now(UTC).isoformat())

    def scheduler_heartbeat(self) -> datetime | None:
        try:
            return datetime.fromisoformat((self.root / "run" / "scheduler.heartbeat").read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_conn.isolation_level = None  # transactions are begun by _sqlite_begin_immediate
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:  # type: ignore[no-untyped-def]
    """Take SQLite's write lock when a transaction begins. A deferred transaction that read
    first and writes later fails at once ("database is locked", no waiting) when another
    process wrote in between; with many processes replicating side by side that happens.
    Immediate transactions queue on the busy timeout instead; they are all short here."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _remove_partial(root: Path) -> None:
    """Undo a failed init so a retry starts clean (only what init itself created)."""
    import shutil

    for name in ("repo", "vault.db", "vault.db-wal", "vault.db-shm", CONFIG + ".tmp"):
        p = root / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
