"""A throwaway PostgreSQL 15 cluster for tests and CI: the vault's state at scale, for real.

Why a real server and not SQLite in its place: PostgreSQL differs where it matters to the
vault — it enforces string lengths and 32-bit INTEGER, converts time zones, has true row
locks and READ COMMITTED snapshots per statement — so the lease races and the migrations are
tested against the same server a fleet uses.

Each ``Postgres`` is its own cluster: ``initdb`` into a fresh temporary folder, listening on
127.0.0.1 on a free port and on a unix socket inside that folder. PostgreSQL refuses to run
as root, so under root the folder is given to the ``postgres`` system user (Debian's
``postgresql`` package creates it; ``scripts/install`` installs the package) and the server
runs as that user. The socket takes the superuser without a password (the folder is private
to its owner); TCP takes only password logins (scram-sha-256) for one test role, the way a
vault on another host connects. Durability is off (``fsync=off``): the data is thrown away.

``with Postgres() as pg: url = pg.create_database("t1")`` gives a database per test; the
role's password is in ``pg.password`` (pass it in ``PGPASSWORD`` or
``REHOST_DATABASE_PASSWORD``: vault URLs never carry one).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rehost.errors import RehostError
from rehost.process import free_port
from rehost.testkit.service import ServerProcess

if TYPE_CHECKING:
    import psycopg  # imported when a cluster starts: PostgreSQL is optional

#: where Debian puts the server binaries; ``$REHOST_PG_BIN`` overrides it
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
#: the system user the server runs as when the tests run as root
SYSTEM_USER = "postgres"
#: the login role tests (and the vaults they make) use over TCP
ROLE = "rehost"

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RehostError):
    """PostgreSQL is missing or did not start."""

    user_error = False


def postgres_bin() -> Path | None:
    """The folder with ``initdb`` and ``postgres``, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if os.environ.get("REHOST_PG_BIN"):
        candidates.append(Path(os.environ["REHOST_PG_BIN"]))
    candidates.append(DEBIAN_BIN)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def missing_reason() -> str | None:
    """Why a PostgreSQL cluster cannot be started here (for a test's skip), or None."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (no initdb/postgres; run scripts/install: apt postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


class Postgres(ServerProcess):
    """One PostgreSQL cluster on a free loopback port; ``with Postgres() as pg: ...``."""

    log_name = "postgres.log"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back, disconnect, exit
    stop_wait = 10.0

    def __init__(self, *, start_timeout: float = 60.0, max_connections: int = 200) -> None:
        super().__init__(None, prefix="rehost-pg-", start_timeout=start_timeout)
        self.max_connections = max_connections
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        #: seconds ``start`` took (initdb + server up + role made), for the record
        self.started_in = 0.0
        self._user: tuple[int, int] | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str) -> str:
        """The database's URL over TCP, as a vault stores it: the role, never the password."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """What a process needs to log in (libpq reads ``PGPASSWORD``)."""
        return {"PGPASSWORD": self.password}

    # ---- life cycle ---------------------------------------------------------------------

    def start(self) -> Postgres:
        """initdb, start the server, make the test role; on any failure nothing is left."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Postgres:
        reason = missing_reason()
        if reason:
            raise PostgresError(reason)
        started = time.monotonic()
        bindir = postgres_bin()
        assert bindir is not None
        if os.geteuid() == 0:  # PostgreSQL will not run as root: hand the folder to postgres
            entry = pwd.getpwnam(SYSTEM_USER)
            self._user = (entry.pw_uid, entry.pw_gid)
            os.chown(self.folder, *self._user)
        os.chmod(self.folder, 0o700)
        pwfile = self.folder / "superuser.pw"  # initdb wants a superuser password for TCP
        pwfile.write_text(secrets.token_urlsafe(18) + "\n")
        if self._user:
            os.chown(pwfile, *self._user)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                   "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                   f"--pwfile={pwfile}", "--no-sync", "--no-instructions"])
        pwfile.unlink()
        self.port = free_port()
        self._spawn(
            [str(bindir / "postgres"), "-D", str(self.data),
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
             "-c", f"unix_socket_directories={self.socket_dir}",
             "-c", f"max_connections={self.max_connections}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "log_min_messages=warning", "-c", "log_min_error_statement=panic"],
            env=self._child_env(), **self._as_user(),
        )
        self._wait_ready()
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(self.password)))
        self.started_in = time.monotonic() - started
        return self

    def _child_env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
                "HOME": str(self.folder), "TZ": "UTC"}

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user[0], "group": self._user[1], "extra_groups": []}

    def _run(self, cmd: list[str]) -> None:
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           env=self._child_env(), cwd=self.folder, **self._as_user())
        if p.returncode != 0:
            raise PostgresError(f"{Path(cmd[0]).name} failed ({p.returncode}): {p.stderr[-2000:]}")

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PostgresError(f"postgres exited ({self._proc.returncode}): {self._log_tail()}")
            try:
                psycopg.connect(**self._admin_args(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise PostgresError(f"postgres did not answer within {self.start_timeout:.0f}s: {self._log_tail()}")

    def _admin_args(self) -> dict[str, Any]:
        return {"host": str(self.socket_dir), "port": self.port, "user": "postgres", "dbname": "postgres"}

    def admin(self) -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket, in autocommit (CREATE DATABASE needs it)."""
        import psycopg

        return psycopg.connect(**self._admin_args(), autocommit=True)

    def create_database(self, name: str) -> str:
        """A new empty database owned by the test role; returns its URL (without password)."""
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                       sql.Identifier(ROLE)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still in it."""
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


