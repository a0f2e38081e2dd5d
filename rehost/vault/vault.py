"""A vault: one folder holding state (SQLite) and the replica repository (design §2).

The embedded default needs no server: ``vault.json`` names the state database and the
repository by URL, so a vault at scale is the same code with other URLs. At scale the state
is a PostgreSQL database (``rehost init --database postgresql://USER@HOST[:PORT]/DB``): many
hosts and processes share it, and its row locks keep leases exclusive across hosts.

``vault.json`` is copied between hosts and read by anyone who can read the vault folder, so
it never holds the database password: libpq finds it in ``PGPASSWORD`` or ``~/.pgpass``
(``PGPASSFILE``), or rehost passes ``REHOST_DATABASE_PASSWORD``, when the vault is opened.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rehost.errors import AlreadyExists, NotFound, RehostError, UsageError
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.storage import Storage, open_storage
from rehost.vault import schema

CONFIG = "vault.json"
VERSION = 1
SQLITE_STATE = "sqlite:///./vault.db"
#: the environment variable with the PostgreSQL password, for hosts without a ~/.pgpass
PASSWORD_ENV = "REHOST_DATABASE_PASSWORD"
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class DatabaseUnavailable(RehostError):
    """The vault's state database cannot be reached or refused the login."""

    exit_code = 11


def database_url(url: str) -> str:
    """Check a ``--database`` URL and return it as vault.json stores it.

    Only PostgreSQL is accepted (the SQLite default lives in the vault folder and needs no
    URL). A password in the URL is refused: vault.json is copied to every host of a fleet
    and readable by whoever reads the folder, so the password belongs in the environment or
    in ``~/.pgpass`` of the hosts that open the vault.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"{_shown(url)} is not a database URL; expected "
                         "postgresql://USER@HOST[:PORT]/DATABASE") from None
    if parsed.drivername not in _PG_SCHEMES:
        raise UsageError(f"database {parsed.drivername}: only PostgreSQL is supported "
                         "(postgresql://USER@HOST[:PORT]/DATABASE); without --database the vault "
                         "keeps its state in a SQLite file in its folder")
    if parsed.password is not None or "password" in parsed.query:
        raise UsageError("the database URL must not contain a password: it would be stored in "
                         f"vault.json. Put it in PGPASSWORD, in ~/.pgpass, or in {PASSWORD_ENV} "
                         "on each host that opens the vault, and give the URL without it: "
                         f"{_shown(url)}")
    if not parsed.database:
        raise UsageError(f"{_shown(url)} names no database: postgresql://USER@HOST[:PORT]/DATABASE")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _shown(url: str) -> str:
    """A URL as it may be printed: any password replaced with ***."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "the given value"
    query = {k: ("***" if k == "password" else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


def open_engine(url: str) -> Engine:
    """The SQLAlchemy engine for a state URL, set up for its database.

    SQLite: WAL, foreign keys, a 30 s busy timeout and ``BEGIN IMMEDIATE`` (see
    ``_sqlite_begin_immediate``). PostgreSQL: the psycopg 3 driver (imported only here, when
    a vault uses PostgreSQL), READ COMMITTED (what the lease and claim statements are
    written for), session time zone UTC (the ``DateTime`` columns hold naive UTC, as SQLite
    does: an aware value converted in a server's local zone would shift every time), and a
    liveness check on pooled connections (a server restart must not fail the next command).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if parsed.drivername not in _PG_SCHEMES:
        raise UsageError(f"vault state {parsed.drivername}: only sqlite and postgresql are supported")
    try:
        import psycopg  # noqa: F401  (only PostgreSQL vaults need it)
    except ImportError:
        raise UsageError("this vault keeps its state in PostgreSQL, and psycopg is not installed: "
                         "pip install 'psycopg[binary]'") from None
    connect_args: dict[str, Any] = {"options": "-c timezone=UTC", "application_name": "rehost",
                                    "connect_timeout": 10}
    if os.environ.get(PASSWORD_ENV):
        connect_args["password"] = os.environ[PASSWORD_ENV]
    engine = create_engine(parsed.set(drivername="postgresql+psycopg"), connect_args=connect_args,
                           isolation_level="READ COMMITTED", pool_pre_ping=True)
    schema.bigint_on_postgresql(engine)
    return engine


class Vault:
    def __init__(self, root: Path, config: dict[str, object], password: Callable[[], str] | None) -> None:
        self.root = root
        self.config = config
        self._password = password
        self._repo: Repository | None = None
        #: the password that unlocked the repository, for daemons this process starts
        self.unlocked_password: str | None = None
        self.engine: Engine = open_engine(self._url(str(config["state"])))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.cache = DigestCache(root / "cache")

    def _url(self, url: str) -> str:
        return url.replace("sqlite:///./", f"sqlite:///{self.root}/")

    @property
    def database(self) -> str:
        """The state database for messages: its URL (never with a password) or "sqlite"."""
        url = make_url(str(self.config["state"]))
        return "sqlite" if url.get_backend_name() == "sqlite" else _shown(str(url))

    @classmethod
    def init(cls, root: Path, *, password: str | None = None, database: str | None = None,
             repository: str | None = None, broker: str | None = None, join: bool = False) -> Vault:
        """Create a vault; refuses a folder that is already a vault or is not empty.

        ``database``: a PostgreSQL URL (no password: see ``database_url``) for the state
        instead of the SQLite file in the folder. Its database must be empty: two vaults in
        one database would see each other's machines and leases.
        ``repository``: a storage URL (``s3://BUCKET/PREFIX?endpoint=...``,
        ``azure://CONTAINER/PREFIX?account_url=...``) instead of the folder's ``repo``.
        ``broker``: a Celery broker (``redis://HOST:PORT/N``): jobs then run on ``rehost
        worker`` processes. ``join``: a folder for another host (or another worker) of an
        existing fleet vault: the same database, repository and broker, its own caches; nothing
        is created in the database or the repository.
        """
        root = Path(root)
        state = SQLITE_STATE if database is None else database_url(database)
        if join and (database is None or repository is None):
            raise UsageError("--join needs the fleet's --database and --repository (the folder of "
                             "another host holds only caches)")
        if broker is not None and not re.match(r"(redis|rediss|amqp|amqps)://", broker):
            raise UsageError(f"--broker takes a redis:// (or amqp://) URL, not {broker!r}")
        if (root / CONFIG).exists():
            raise AlreadyExists(f"{root} is already a vault")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UsageError(f"{root} exists and is not an empty folder; choose a new path")
        config: dict[str, object] = {
            "version": VERSION,
            "state": state,
            "repository": repository or "local:./repo",
        }
        if broker:
            config["broker"] = broker
        root.mkdir(parents=True, exist_ok=True)
        made_tables = False
        vault: Vault | None = None
        try:
            vault = cls(root, config, (lambda: password) if password is not None else None)
            if join:
                vault._upgrade()
                vault.repo  # noqa: B018 - the repository must exist and open (its password too)
            else:
                if database is not None:
                    vault._refuse_used_database()
                made_tables = True
                vault._upgrade()
                Repository.create(vault._storage(create=True), password=password)
            tmp = root / (CONFIG + ".tmp")
            tmp.write_text(json.dumps(config, indent=2) + "\n")
            os.replace(tmp, root / CONFIG)  # the vault exists once this file does
        except BaseException:
            if vault is not None:
                if made_tables and database is not None:
                    _drop_state(vault.engine)
                vault.engine.dispose()
            _remove_partial(root)
            raise
        return vault

    def _refuse_used_database(self) -> None:
        try:
            with self.engine.connect() as conn:
                tables = inspect(conn).get_table_names()
        except OperationalError as e:
            raise self._unavailable(e) from None
        if tables:
            raise UsageError(f"the database {self.database} is not empty (it has {len(tables)} "
                             f"table(s), e.g. {sorted(tables)[0]}): a vault needs a database of its "
                             "own; create one with: createdb -O USER NAME")

    def _upgrade(self) -> None:
        try:
            schema.upgrade(self.engine)
        except OperationalError as e:
            raise self._unavailable(e) from None

    def _unavailable(self, e: OperationalError) -> DatabaseUnavailable:
        cause = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        hint = ""
        if "password" in cause:
            hint = f" (the password comes from PGPASSWORD, ~/.pgpass or {PASSWORD_ENV})"
        return DatabaseUnavailable(f"cannot use the vault's database {self.database}: {cause}{hint}")

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
        try:
            vault._upgrade()
        except BaseException:
            vault.engine.dispose()
            raise
        return vault

    def _storage(self, *, create: bool = False) -> Storage:
        url = str(self.config["repository"])
        if url.startswith("local:./"):
            url = "local:" + str(self.root / url[len("local:./") :])
        local = url.startswith("local:") or ":" not in url.split("/", 1)[0]
        return open_storage(url, create=True) if create and local else open_storage(url)

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

    def insert_or_ignore(self) -> Callable[..., Any] | None:
        """The database's ``insert`` that has ``on_conflict_do_nothing`` (None: only a plain
        INSERT). Its dialect module is imported here, when used: the PostgreSQL one costs
        about 20 ms of every command's start-up, a vault on SQLite included."""
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert  # type: ignore[no-any-return]
        if name == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert  # type: ignore[no-any-return]
        return None

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


def _drop_state(engine: Engine) -> None:
    """Undo a failed init in its PostgreSQL database (the tables init made, all of them)."""
    from rehost.vault.models import Base

    try:
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    except Exception:  # the database went away: there is nothing to undo, or it cannot be done
        pass


def _remove_partial(root: Path) -> None:
    """Undo a failed init so a retry starts clean (only what init itself created)."""
    import shutil

    for name in ("repo", "vault.db", "vault.db-wal", "vault.db-shm", CONFIG + ".tmp"):
        p = root / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
