"""``rehost --server URL --token T ...``: the main commands, driven through a remote API.

The same command names, options and ``--json`` output as the local CLI (the API returns the
CLI's JSON shapes), so scripts work against either. Errors come back as the local CLI's
error classes, so exit codes match too. Operations that are jobs on the server are
followed until they end, step by step, as ``rehost failover`` does locally.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from rehost.cli.context import emit_json, err, out
from rehost.cli.job_cmd import show
from rehost.errors import AlreadyExists, InvalidState, NotFound, RehostError, UsageError, WrongPassword
from rehost.jobs.views import MARK, first_line, job_row

POLL_S = 1.0


class RemoteError(RehostError):
    """The server refused the token or failed; its message is passed on as it is."""

    exit_code = 7


def wants_server(argv: list[str]) -> bool:
    """True when the command line asks for a remote rehost (``--server`` before the command)."""
    return any(a == "--server" or a.startswith("--server=") for a in argv)


class Client:
    """A thin httpx client: JSON in, JSON out, errors raised as RehostError subclasses."""

    def __init__(self, server: str, token: str, ca_cert: str | None = None, timeout: float = 60.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server takes a URL such as https://host:8080, not {server!r}")
        if not token:
            raise UsageError("--server needs a token: --token T or $REHOST_TOKEN "
                             "(made with: rehost token create NAME --role operator)")
        import ssl  # with httpx: only a remote command pays for them

        import httpx  # ~70 ms of every rehost start otherwise

        self._httpx = httpx
        self.http = httpx.Client(base_url=server.rstrip("/") + "/api/v1", timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"},
                                 verify=ssl.create_default_context(cafile=ca_cert) if ca_cert else True)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body, params=params)
        except self._httpx.HTTPError as e:
            raise UsageError(f"cannot reach {self.http.base_url}: {e}") from None
        if r.status_code >= 400:
            try:
                message = str(r.json().get("error", r.text))
            except ValueError:
                message = r.text[:200] or r.reason_phrase
            raise _error(r.status_code, message)
        return r.json() if r.content else None

    def follow(self, job: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
        """Poll a job until it ends, printing each step as it ends (unless ``quiet``)."""
        shown: set[str] = set()
        while True:
            for s in job["steps"]:
                if not quiet and s["state"] not in ("pending", "running") and s["name"] not in shown:
                    shown.add(s["name"])
                    err.print(f"  {MARK.get(s['state'], '?')} {s['title']} {first_line(s['detail'])}",
                              highlight=False, markup=False)
            if job["state"] not in ("queued", "running"):
                return job
            time.sleep(POLL_S)
            job = self.call("GET", f"/jobs/{job['id']}")


def _error(status: int, message: str) -> RehostError:
    if status == 404:
        return NotFound(message)
    if status == 409:
        return AlreadyExists(message) if "exist" in message else InvalidState(message)
    if status in (400, 422):
        return UsageError(message)
    if status == 401 and "password" in message:
        return WrongPassword(": " + message)
    return RemoteError(f"server answered {status}: {message}")


remote_app = typer.Typer(name="rehost", help="rehost, driving a remote server through its API.",
                         no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@remote_app.callback()
def _root(
    ctx: typer.Context,
    server: str = typer.Option(..., "--server", help="URL of a rehost serve (e.g. https://dr1:8080)."),
    token: str = typer.Option("", "--token", envvar="REHOST_TOKEN", show_envvar=True,
                              help="API token (prefer $REHOST_TOKEN: a flag shows in ps)."),
    ca_cert: str = typer.Option(None, "--ca-cert", envvar="REHOST_CA_CERT",
                                help="CA certificate to trust for https (a self-signed server)."),
) -> None:
    ctx.obj = Client(server, token, ca_cert)


def client(ctx: typer.Context) -> Client:
    obj = ctx.find_root().obj
    assert isinstance(obj, Client)
    return obj


def _finish(job: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        emit_json(job)
    elif job["state"] == "succeeded":
        out.print(f"{what} succeeded", highlight=False)
    if job["state"] != "succeeded":
        if not as_json:
            first = (job["error"] or job["state"]).splitlines()[0]
            err.print(f"rehost: error: {what} failed: {first}; see rehost job {job['id']}", markup=False)
        raise typer.Exit(1)


@remote_app.command("machines")
def machines(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List machines with their state, health and latest recovery point."""
    data = client(ctx).call("GET", "/machines")
    if as_json:
        emit_json(data)
        return
    if not data:
        out.print("no machines yet")
    for d in data:
        h = d["health"]
        where = f"  runs on {d['target']} ({d['runs_at']})" if d["runs_at"] else ""
        where += f"  {h['status']}" + (f" ({h['reason']})" if h["reason"] else "")
        out.print(f"{d['name']:20} {d['source']:6} {d['state']:20} points={d['points']:<4} "
                  f"latest={d['latest_time'] or 'never'}{where}", highlight=False)


@remote_app.command("points")
def points(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """List a machine's recovery points, oldest first."""
    data = client(ctx).call("GET", f"/machines/{name}/points")
    if as_json:
        emit_json(data)
        return
    if not data:
        out.print(f"{name} has no recovery points yet")
    for d in data:
        out.print(f"{d['id'][:12]}  {d['time']}  {d['consistency']}")


@remote_app.command("readiness")
def readiness(ctx: typer.Context, name: str, target: str = typer.Option(None, help="A target's name."),
              point: str = typer.Option("latest"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Will NAME boot on its target? Each requirement with pass / warn / fail and the fix."""
    from rehost.cli.readiness_cmd import show

    params = {"point": point, **({"target": target} if target else {})}
    c = client(ctx)
    c.http.timeout = 600.0  # a first inspection of a point starts an appliance (20-60 s)
    data = c.call("GET", f"/machines/{name}/readiness", params=params)
    if as_json:
        emit_json(data)
    else:
        show(data)


@remote_app.command("replicate")
def replicate(
    ctx: typer.Context,
    name: str,
    target: str = typer.Option(None, help="Target this machine fails over to (remembered)."),
    network_map: list[str] = typer.Option([], "--network-map", help="SOURCE=TARGET network pairs."),
    policy: str = typer.Option(None, help="Attach this replication policy."),
    app_consistent: bool = typer.Option(False, "--app-consistent"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run one replication cycle on the server and wait for it. Prints the point id."""
    c = client(ctx)
    if policy or target or network_map:
        mapping = dict(pair.partition("=")[::2] for pair in network_map)
        c.call("POST", f"/machines/{name}/enable",
               {"policy": policy, "target": target, "network_map": mapping, "replicate": False})
    job = c.follow(c.call("POST", f"/machines/{name}/replicate", {"app_consistent": app_consistent}),
                   quiet=as_json)
    if job["state"] != "succeeded":
        _finish(job, as_json, f"replication of {name}")
    point = c.call("GET", f"/machines/{name}")["latest_point"]
    if as_json:
        emit_json({"point": point, "job": job["id"]})
    else:
        out.print(point)


@remote_app.command("failover")
def failover(
    ctx: typer.Context,
    name: str,
    test: bool = typer.Option(False, "--test", help="Boot a throw-away copy on the isolated network."),
    cleanup: bool = typer.Option(False, "--cleanup", help="Remove the test machine."),
    point: str = typer.Option("latest", help="latest, latest-processed, latest-app-consistent or an id."),
    shutdown_source: bool = typer.Option(False, "--shutdown-source"),
    target: str = typer.Option(None, help="Target name (default: the machine's, or the only one)."),
    boot_timeout: float = typer.Option(300.0, help="Seconds to wait for the boot marker."),
    force_readiness: bool = typer.Option(
        False, "--force-readiness", help="Go on although a readiness requirement fails (needs --reason; "
        "both are recorded in the job)."),
    reason: str = typer.Option(None, "--reason", help="Why, with --force-readiness."),
    fix_up: list[str] = typer.Option([], "--fix-up", help="Fix-ups on the copy (rehost failover --help)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fail a machine over on the server (or test it with --test, then --cleanup)."""
    if test and cleanup:
        raise UsageError("--test and --cleanup are separate steps: run --test first, --cleanup later")
    if reason is not None and not force_readiness:
        raise UsageError("--reason goes with --force-readiness")
    if (force_readiness or fix_up) and cleanup:
        raise UsageError("--force-readiness and --fix-up go with a (test) failover, not --cleanup")
    c = client(ctx)
    if cleanup:
        job = c.call("POST", f"/machines/{name}/test-cleanup")
    else:
        body: dict[str, Any] = {"point": point, "target": target, "boot_timeout": boot_timeout}
        if force_readiness:
            body.update(force_readiness=True, reason=reason or "")
        if fix_up:
            body["fixups"] = [n for v in fix_up for n in v.split(",") if n.strip()]
        if not test:
            body["shutdown_source"] = shutdown_source
        job = c.call("POST", f"/machines/{name}/{'test-failover' if test else 'failover'}", body)
    if not as_json:
        err.print(f"job {job['id']}: {job['kind']} of {name}", highlight=False)
    _finish(c.follow(job, quiet=as_json), as_json, f"{job['kind']} of {name}")


@remote_app.command("complete")
def complete(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Finish a migration on the server: purge replica data, keep the migrated machine."""
    c = client(ctx)
    _finish(c.follow(c.call("POST", f"/machines/{name}/complete"), quiet=as_json), as_json,
            f"migration of {name}")


@remote_app.command("jobs")
def jobs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the server's jobs, newest first."""
    data = client(ctx).call("GET", "/jobs")
    if as_json:
        emit_json(data)
        return
    for d in data:
        out.print(job_row(d), highlight=False, markup=False)


@remote_app.command("job")
def job(
    ctx: typer.Context,
    what: str = typer.Argument(..., metavar="ID | cancel ID"),
    job_id: str = typer.Argument(None, metavar="[ID]"),
    watch: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job with its steps, or cancel one not yet past its point of no return. (Resuming
    an interrupted job is done on the server: rehost job resume ID.)"""
    c = client(ctx)
    if what == "resume":
        raise UsageError("job resume runs a job in the calling process: run it on the server")
    if what == "cancel":
        if not job_id:
            raise UsageError("rehost job cancel needs a job id (see: rehost jobs)")
        j = c.call("POST", f"/jobs/{job_id}/cancel")
        out.print(f"job {j['id']} cancelled")
        return
    show(lambda: c.call("GET", f"/jobs/{what}"), as_json=as_json, watch=watch)
