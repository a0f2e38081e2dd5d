"""``rehost serve``: the replication scheduler and, unless told otherwise, the portal.

The scheduler runs in a thread with a vault of its own; uvicorn serves the API and the
dashboard in the main thread and owns the signals (Ctrl-C, SIGTERM), after which the
scheduler is asked to stop and given time to finish its cycle.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rehost.api.deps import OncePassword
from rehost.errors import UsageError
from rehost.jobs import leases
from rehost.vault.agents import DEFAULT_ENROLL_PORT
from rehost.vault.scheduler import Scheduler
from rehost.vault.vault import Vault

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{option} takes HOST:PORT (e.g. {DEFAULT_LISTEN}), not {text!r}")
    return host.strip("[]"), int(port)


def bind(host: str, port: int) -> socket.socket:
    """Take the port before anything starts, so a busy port is one clear error, not a
    server that announced itself and then died."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                         "(choose another with --listen HOST:PORT)") from None
    return sock


def scheduler_loop(vault_root: Path, password: Callable[[], str] | None, stop: threading.Event,
                   tick: float, log: Callable[[str], None], workers: int = 1) -> None:
    """Run the scheduler until ``stop``; an unexpected error is logged and the loop restarts,
    because a portal whose replication silently died is worse than a noisy log."""
    while not stop.is_set():
        vault = Vault.open(vault_root, password)
        try:
            # one scheduler per vault, however many rehost serve processes share its database:
            # the others serve the API and wait to take over (the lease lapses when its holder dies)
            leader = leases.try_acquire(vault, "scheduler", "scheduler")
            if not isinstance(leader, leases.Lease):
                log(f"the scheduler runs in {leader.holder}; this process serves the API and waits")
                while not stop.is_set() and not isinstance(
                        leader := leases.try_acquire(vault, "scheduler", "scheduler"), leases.Lease):
                    stop.wait(leases.TTL_S / 3)
                if stop.is_set():
                    continue
                log("this process runs the scheduler now")
            assert isinstance(leader, leases.Lease)
            try:
                Scheduler(vault, log=log, workers=workers, resume_jobs=True).run_forever(stop, tick)
            finally:
                leader.release()
        except Exception as e:
            log(f"scheduler stopped by {type(e).__name__}: {e}; restarting in 5s")
            logging.getLogger("rehost.scheduler").exception("scheduler error")
            stop.wait(5)
        finally:
            vault.close()


def serve(
    vault_root: Path,
    password: Callable[[], str] | None,
    *,
    listen: str | None = DEFAULT_LISTEN,
    cert: Path | None = None,
    key: Path | None = None,
    tick: float = 1.0,
    log: Callable[[str], None] = print,
    enroll_listen: str | None = None,
    workers: int = 1,
) -> None:
    """Serve until stopped. ``listen=None`` runs the scheduler alone (no API).

    ``enroll_listen``: where agents register; by default on port 8744 of every address when
    the API runs, off when it does not; ``"off"``: never."""
    once = OncePassword(password)
    stop = threading.Event()
    if enroll_listen is None:
        enroll_listen = None if listen is None else f"0.0.0.0:{DEFAULT_ENROLL_PORT}"
    sock = None
    if listen is not None:
        if key and not cert:
            raise UsageError("--key needs --cert")
        for f in (cert, key):
            if f is not None and not Path(f).is_file():
                raise UsageError(f"{f} is not a file")
        sock = bind(*parse_listen(listen))
    try:
        with _enrollment(vault_root, once.callback, None if enroll_listen == "off" else enroll_listen, log):
            if listen is None or sock is None:
                log(f"serving vault {vault_root}: continuous replication (Ctrl-C stops)")
                with _stop_on_signals(stop):
                    scheduler_loop(vault_root, once.callback, stop, tick, log, workers)
                return
            enroll_port = None if enroll_listen in (None, "off") else parse_listen(enroll_listen)[1]
            _serve_portal(vault_root, once, stop, sock, listen=listen, cert=cert, tick=tick, log=log, key=key,
                          workers=workers, enroll_port=enroll_port)
    finally:
        if sock is not None:
            sock.close()


@contextmanager
def _enrollment(vault_root: Path, password: Callable[[], str] | None, listen: str | None,
                log: Callable[[str], None]) -> Iterator[None]:
    """The agents' enrollment endpoint for the duration of ``rehost serve``."""
    if listen is None:
        yield
        return
    from rehost.vault.agents import start_enrollment

    host, port = parse_listen(listen, "--enroll-listen")
    vault = Vault.open(vault_root, password)
    try:
        server = start_enrollment(vault, host, port, log)
    finally:
        vault.close()
    try:
        yield
    finally:
        server.stop()


def _serve_portal(vault_root: Path, once: OncePassword, stop: threading.Event, sock: socket.socket, *,
                  listen: str, cert: Path | None, key: Path | None, tick: float,
                  log: Callable[[str], None], workers: int = 1, enroll_port: int | None = None) -> None:
    host, port = parse_listen(listen)

    import uvicorn

    from rehost.api.tokens import list_tokens
    from rehost.portal.app import create_app

    try:
        app = create_app(vault_root, once.callback)  # opens the vault: a wrong password fails here
    except BaseException:
        sock.close()
        raise
    app.state.enroll_port = enroll_port  # the setup page shows agents this port
    with app.state.pool.borrow() as vault:
        if not list_tokens(vault):
            log("no API tokens yet: make one with rehost token create NAME --role admin")
    worker = threading.Thread(target=scheduler_loop, name="rehost-scheduler", daemon=True,
                              args=(vault_root, once.callback, stop, tick, log, workers))
    worker.start()
    scheme = "https" if cert else "http"
    log(f"serving vault {vault_root}: API and dashboard at {scheme}://{listen}/ui/, "
        "continuous replication (Ctrl-C stops)")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
    try:
        with _stop_on_signals(stop):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        worker.join(30)  # the scheduler finishes its cycle; a daemon thread after that
        log("stopped")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop``. Installed before uvicorn's own handlers on purpose:
    uvicorn restores these and re-raises the signal after its graceful shutdown, which then
    lands here instead of killing the process while the scheduler finishes its cycle."""
    saved = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
