"""Request and response models: the API's contract, published at /openapi.json.

Field meanings follow the CLI's ``--json`` output. Patterns on request strings only keep out
what the services' parsers were never meant to see (NUL bytes in paths, numbers too large
for a duration); the services still do the real validation and say what is wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Name = Annotated[str, Field(min_length=1, max_length=64, description="1-64 letters, digits, '.', '_', '-'")]
HostPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$",
                                description="A path on the rehost server")]


def _shaped(pattern: str, hint: str) -> AfterValidator:
    """Refuse with a message that says what to write (a bare regex would not)."""
    rx = re.compile(pattern)

    def check(value: str) -> str:
        if not rx.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not valid: use {hint}")
        return value

    return AfterValidator(check)


# a sign is let through so the service refuses "-5m" with the CLI's message ("must be positive")
_DURATION = r"\s*-?[0-9]{1,9}\s*[smhdSMHD]\s*"
Duration = Annotated[str, Field(max_length=32, json_schema_extra={"pattern": f"^{_DURATION}$"},
                                description="e.g. 30s, 5m, 24h, 7d"),
                     _shaped(_DURATION, "a number and s, m, h or d (e.g. 24h)")]
_NEVER = rf"({_DURATION}|\s*(0|never|off)\s*)"
DurationOrNever = Annotated[str, Field(max_length=32, json_schema_extra={"pattern": f"^{_NEVER}$"},
                                       description="e.g. 1h; 0, never or off: no app-consistent points"),
                            _shaped(_NEVER, "a duration such as 1h, or never")]
_BANDWIDTH = r"\s*([0-9]{1,12}(\.[0-9]{1,6})?\s*[A-Za-z]{0,3}(/s)?|none|off)\s*"
Bandwidth = Annotated[str, Field(max_length=32, json_schema_extra={"pattern": f"^{_BANDWIDTH}$"},
                                 description="e.g. 100MB/s, 20MiB/s; none or off: unlimited"),
                      _shaped(_BANDWIDTH, "a rate such as 100MB/s or 20MiB/s, or none")]
BandwidthWindow = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$",
                                       description="[DAYS] HH:MM-HH:MM=RATE in the server's local time, "
                                                   "e.g. 'mon-fri 08:00-18:00=10MB/s', "
                                                   "'sat,sun 00:00-24:00=none', '22:00-06:00=50MB/s'")]
PointSpec = Annotated[str, Field(min_length=1, max_length=64,
                                 description="latest, latest-processed, latest-app-consistent or a point id")]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: the vault stores UTC; SQLite returns it without a zone, so say it is UTC (RFC 3339)
Utc = Annotated[datetime, AfterValidator(_utc)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a silent default


class ErrorOut(BaseModel):
    error: str


# -- machines and points ---------------------------------------------------------------------------


class DiskOut(BaseModel):
    index: int
    format: str
    size: int
    path: str


class HealthOut(BaseModel):
    status: Literal["healthy", "warning", "critical", "not-protected"]
    rpo_seconds: float | None
    reason: str


class ReadinessKnownOut(BaseModel):
    """What is known of the newest point's readiness for the item's target (no inspection is
    started to answer): ``status`` pass, warn, fail or not inspected."""

    point: str
    target: str
    status: str
    failed: list[str] = Field(default_factory=list, description="The failed requirements' names")
    warnings: int = 0
    text: str = Field("", description='For a list: "fail (2)", "warn (1)", "pass"')


class MachineOut(BaseModel):
    name: str
    source: str
    state: str
    state_reason: str
    disks: list[DiskOut]
    points: int
    latest_point: str | None
    latest_time: str | None
    target: str | None = Field(description="The target it runs on after failover")
    runs_at: str | None
    network_map: dict[str, str]
    policy: str | None
    health: HealthOut
    last_cycle: dict[str, Any]
    agent: dict[str, Any] | None = Field(
        None, description="A physical machine's agent as the server last saw it (seen, checked, error)"
    )
    placement: dict[str, Any]
    spec: dict[str, Any] = Field(
        default_factory=dict, description="What the source discovered beyond the disks: firmware, cpus, "
        "memory_mib, nics (mac, network), guest_os; defaults where it knew nothing")
    replica: dict[str, Any] | None = Field(
        None, description="Its copy on a target that keeps one (Azure page blobs): target, the point "
        "it holds (point, point_time, synced_at), the last sync's figures (last) or error")
    assigned_target: str | None = Field(description="The target it fails over to (detail only)")


class MachineDetailOut(MachineOut):
    readiness: ReadinessKnownOut | None = Field(
        None, description="The newest point's readiness for its target, from the cached inspection "
        "(GET /machines/{name}/readiness inspects); null without a target or a point")


class PointDiskOut(BaseModel):
    index: int
    size: int
    full: bool


class PointOut(BaseModel):
    id: str
    time: str
    consistency: str
    sequence: int
    disks: list[PointDiskOut]


class AddImageSourceIn(_In):
    name: Name | None = Field(None, description="Machine name; omitted: the name inside an OVA/OVF")
    paths: list[HostPath] = Field(min_length=1, max_length=64)
    vm: str | None = Field(None, max_length=200,
                           description="Of a vApp (an OVA/OVF of several VMs): the VM to import")


class AddPhysicalSourceIn(_In):
    name: Name
    expires: str = Field("1h", description="How long the one-time passphrase is valid (e.g. 30m)")


class InvitationOut(BaseModel):
    machine: str
    passphrase: str = Field(description="One-time, shown only in this answer")
    fingerprint: str = Field(description="The SHA-256 of the enrollment certificate the agent pins")
    expires_in_s: float


class AddSourceIn(_In):
    kind: str = Field(min_length=1, max_length=32, description="image, qemu, physical (GET /sources/kinds)")
    name: Name | None = Field(None, description="Machine name; omitted: the name the source gives it "
                              "(an OVA/OVF's)")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="The kind's options, as GET /sources/kinds lists them")


class SourceAddedOut(BaseModel):
    machine: MachineOut
    invitation: InvitationOut | None = Field(
        None, description="A physical machine's one-time passphrase for its agent (shown once)")


class SourceKindOut(BaseModel):
    kind: str
    summary: str
    capabilities: dict[str, Any]
    options: list[dict[str, Any]]


class SourceOut(BaseModel):
    name: str
    kind: str
    settings: dict[str, Any]
    machines: list[str]


class SourceNetworkOut(BaseModel):
    machine: str
    network: str
    target_network: str | None = Field(description="None: not mapped")


class SourceVerifyOut(BaseModel):
    name: str
    kind: str
    settings: dict[str, Any]
    maps_networks: bool = Field(description="The source keeps its own network map (VMM): every network "
                                "must be mapped before a failover")
    network_map: dict[str, str]
    ok: bool = Field(description="False while a network of a source that maps networks is unmapped")
    networks: list[SourceNetworkOut]


class NetworkMapIn(_In):
    pairs: dict[Annotated[str, Field(min_length=1, max_length=64)],
                Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=64, description="VM network -> target network, added to the map or changed")


class EnableIn(_In):
    policy: Name | None = Field(None, description="Replicate continuously under this policy")
    target: Name | None = Field(None, description="Fail over to this target")
    network_map: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=64)]] = Field(
        default_factory=dict, max_length=32, description="source network -> production, isolated or none")
    replicate: bool = Field(True, description="Start the first replication now, as a job")


class ReplicateIn(_In):
    app_consistent: bool = False


class ReadinessIn(_In):
    """What a (test) failover may say about readiness: go on past failed requirements (with
    the reason, recorded), and the fix-ups to apply to the copy."""

    force_readiness: bool = Field(False, description="Go on although a readiness requirement of the point "
                                                     "fails (needs a reason; both are recorded in the job)")
    reason: str | None = Field(None, max_length=1000, pattern=r"^[^\x00]*$",
                               description="Why (with force_readiness): recorded in the job")
    fixups: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=8,
        description="Fix-ups on the copy on the target, never the source or the point: initramfs, dhcp, "
                    "fstab, serial-console, remove-agents, or all")

    @model_validator(mode="after")
    def _readiness_reason(self) -> ReadinessIn:
        if self.force_readiness and not (self.reason or "").strip():
            raise ValueError('"force_readiness": true needs a "reason": why the machine may fail over '
                             'although a readiness requirement fails (it is recorded)')
        if self.reason is not None and not self.force_readiness:
            raise ValueError('a "reason" is recorded only with "force_readiness": true')
        return self

    @property
    def readiness_force_reason(self) -> str | None:
        return (self.reason or "").strip() if self.force_readiness else None


class FailoverTestIn(ReadinessIn):
    point: PointSpec = "latest"
    target: Name | None = None
    boot_timeout: float = Field(300.0, gt=0, le=3600, description="Seconds to wait for the boot marker")


class FailoverIn(FailoverTestIn):
    shutdown_source: bool = Field(False, description="Shut the source down first (failover goes on if "
                                                     "that fails)")


# -- infrastructure ----------------------------------------------------------------------------------


class AddLocalTargetIn(_In):
    name: Name
    path: HostPath
    accel: Literal["tcg", "kvm"] = "tcg"
    memory_mib: int = Field(256, ge=64, le=1 << 20)


class AddTargetIn(_In):
    kind: str = Field(min_length=1, max_length=32, description="local, memory (GET /targets/kinds)")
    name: Name
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="The kind's options, as GET /targets/kinds lists them")


class TargetKindOut(BaseModel):
    kind: str
    summary: str
    test_double: bool
    capabilities: dict[str, Any]
    options: list[dict[str, Any]]


class CheckOut(BaseModel):
    name: str
    ok: bool
    detail: str


class TargetOut(BaseModel):
    name: str
    kind: str
    settings: dict[str, Any]
    verified_ok: bool | None
    verified_at: Utc | None
    verify_report: list[dict[str, Any]]


class VerifyOut(BaseModel):
    ok: bool
    checks: list[CheckOut]


class PolicyFields(_In):
    rpo_threshold: Duration | None = Field(None, description="Warn when the newest point is older "
                                                             "(default 5m)")
    retention: Duration | None = Field(None, description="How long points are kept (default 24h)")
    app_consistent_every: DurationOrNever | None = None
    crash_consistent_every: Duration | None = Field(None, description="default 30s")
    bandwidth: Bandwidth | None = None
    bandwidth_schedule: list[BandwidthWindow] | None = Field(
        None, max_length=32, description="Windows with their own limit; outside them ``bandwidth`` applies, "
                                         "the first that matches wins. Replaces the schedule; [] clears it.")


class PolicyIn(PolicyFields):
    name: Name


class BandwidthWindowOut(BaseModel):
    days: list[int] = Field(description="0 is Monday, 6 Sunday: the days the window starts on")
    start: str = Field(description="HH:MM, server's local time")
    end: str = Field(description="HH:MM (24:00: midnight); before start: the window ends the next day")
    bps: int | None = Field(description="The limit in the window; null: unlimited")


class PolicyOut(BaseModel):
    name: str
    rpo_threshold_s: int
    retention_s: int
    app_consistent_every_s: int
    crash_consistent_every_s: int
    bandwidth_bps: int | None
    bandwidth_schedule: list[str] = Field(description="The windows, as they are written in requests")
    bandwidth_windows: list[BandwidthWindowOut] = Field(description="The same windows, parsed")


class AttachIn(_In):
    machine: Name


# -- jobs --------------------------------------------------------------------------------------------


class StepOut(BaseModel):
    name: str
    title: str
    state: str
    done: int
    total: int
    detail: str
    started_at: Utc | None
    ended_at: Utc | None


class ForcedOut(BaseModel):
    reason: str = Field(description="The operator's reason for completing without a passing verdict")
    why: str = Field(description="What was missing: the failed or absent verdict")


class VerdictCheckOut(BaseModel):
    """One named check against a failed-over machine."""

    model_config = ConfigDict(extra="allow")
    machine: str = ""
    name: str = ""
    kind: str = Field("", description="boot, tcp, http or script")
    ok: bool
    detail: str = ""


class VerdictOut(BaseModel):
    ok: bool
    checks: list[VerdictCheckOut] = Field(default_factory=list)


class JobOut(BaseModel):
    id: str
    kind: str
    machine: str
    state: str
    created_at: Utc
    started_at: Utc | None
    ended_at: Utc | None
    error: str
    actor: str = Field("", description="Who asked for it: token:NAME, local:USER or system:scheduler")
    cancellable: bool
    steps: list[StepOut]
    verdict: VerdictOut | None = Field(None, description="A (test) failover's checks, once they have run")
    forced: ForcedOut | None = Field(None, description="A complete job started without a passing verdict: "
                                                       "the operator's reason")


# -- tokens and overview -------------------------------------------------------------------------------


class TokenIn(_In):
    name: Name
    role: Literal["reader", "operator", "admin"]
    expires: str | None = Field(None, max_length=12, description="e.g. 30d: the token stops working "
                                "that long from now (default: never)")


class TokenOut(BaseModel):
    name: str
    role: str
    created_at: Utc
    last_used: Utc | None
    expires_at: Utc | None = None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The secret: shown this once, only its hash is kept")


class AlertOut(BaseModel):
    severity: Literal["warning", "critical"]
    subject: str
    message: str


class OverviewOut(BaseModel):
    items: int
    by_health: dict[str, int]
    by_state: dict[str, int]
    worst_rpo_seconds: float | None
    scheduler_running: bool
    alerts: list[AlertOut]


class WhoAmIOut(BaseModel):
    name: str
    role: str


class PlanGroupOut(BaseModel):
    group: int
    machines: list[str]
    #: {"group", "kind": pre|post|cleanup|manual, "script", "timeout_s"} or {..., "text"}
    actions: list[dict[str, Any]]


class PlanOut(BaseModel):
    name: str
    groups: list[PlanGroupOut]


class PlanConfirmedOut(BaseModel):
    plan: str
    #: the text of the manual action that was confirmed
    confirmed: str


class PlanFailoverIn(ReadinessIn):
    """One of three: ``{"test": true}`` (with ``at``), ``{"cleanup": true}``, or a real failover,
    which must say ``shutdown_source`` (true or false) so that no empty body fails a plan over."""

    test: bool = Field(False, description="Test-fail over every machine, group by group, on the "
                                          "isolated network")
    cleanup: bool = Field(False, description="Remove the test machines (last group first) and run the "
                                             "plan's cleanup actions")
    shutdown_source: bool | None = Field(
        None, description="A real failover of the plan (neither test nor cleanup): shut each source "
                          "down first (true) or not (false); required for a real failover")
    at: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00]+$",
                           description="With test: fail over to the newest points at or before this "
                                       "ISO 8601 time (consistent across the plan)")

    @model_validator(mode="after")
    def _one(self) -> PlanFailoverIn:
        real = self.shutdown_source is not None
        if self.test + self.cleanup + real != 1:
            raise ValueError('say {"test": true}, {"cleanup": true}, or for a real failover '
                             '{"shutdown_source": true|false}')
        if self.at is not None and not self.test:
            raise ValueError('"at" goes with {"test": true}')
        if self.cleanup and (self.force_readiness or self.fixups):
            raise ValueError('"force_readiness" and "fixups" go with a (test) failover, not "cleanup"')
        return self


class ForceIn(_In):
    """Complete without a passing verdict only when forced, and then with the reason (recorded)."""

    force: bool = Field(False, description="Complete although the last failover's verdict did not pass")
    reason: str | None = Field(None, max_length=1000, pattern=r"^[^\x00]*$",
                               description="Why (with force): recorded in the job")

    @model_validator(mode="after")
    def _reason(self) -> ForceIn:
        if self.force and not (self.reason or "").strip():
            raise ValueError('"force": true needs a "reason": why the migration is complete without a '
                             'passing verdict (it is recorded)')
        if self.reason is not None and not self.force:
            raise ValueError('a "reason" is recorded only with "force": true')
        return self

    @property
    def force_reason(self) -> str | None:
        return (self.reason or "").strip() if self.force else None


class ProbeIn(_In):
    """A named check of a machine, run after its (test) failover: ``tcp`` (``port``, ``send``,
    ``expect`` in the reply), ``http`` (``port``, ``path``, ``status``, ``expect`` in the body) or
    ``script`` (a program on the rehost server, absolute path; passes on exit 0; admins only)."""

    name: Name
    kind: Literal["tcp", "http", "script"]
    port: int = Field(0, ge=0, le=65535, description="The guest's port (tcp, http)")
    send: str = Field("", max_length=1000, description="tcp: sent first (\\r\\n escapes allowed)")
    expect: str = Field("", max_length=1000, description="tcp: in the reply; http: in the body")
    path: str = Field("/", max_length=2000, description="http: the path to GET")
    status: int = Field(200, description="http: the status wanted")
    script: str = Field("", max_length=4096, pattern=r"^[^\x00]*$",
                        description="script: its absolute path on the rehost server")
    timeout_s: float = Field(120.0, description="How long to keep trying (services start after the boot)")


class ProbeOut(BaseModel):
    name: str
    kind: str
    port: int
    send: str
    expect: str
    path: str
    status: int
    script: str
    timeout_s: float
    description: str = Field(description="What it checks, in words")


class LastVerdictOut(BaseModel):
    job: str
    kind: str
    state: str
    verdict: VerdictOut | None


class PlanChildOut(BaseModel):
    job: str = Field(description="The machine's child job (test-failover, test-cleanup, ...)")
    kind: str
    state: str
    step: str = Field(description="The title of its running step (or of the step it failed at)")
    verdict: VerdictOut | None = Field(None, description="Its checks, once it has run them")


class PlanWaitingOut(BaseModel):
    key: str
    text: str = Field(description="The manual action an operator must confirm (POST /plans/{name}/confirm)")


class PlanJobOut(JobOut):
    """A plan job: one step per group, a child job per machine started so far."""

    plan: str
    children: dict[str, PlanChildOut] = Field(description="machine -> its child job")
    waiting: PlanWaitingOut | None
    confirmed: list[str] = Field(description="The keys of the manual actions confirmed so far")
    verdict: VerdictOut | None = Field(None, description="The plan's checks, once they have run")


class AuditOut(BaseModel):
    id: int
    time: str
    actor: str = Field(description="token:NAME, local:USER, anonymous or system:WHAT")
    role: str
    via: Literal["cli", "api", "ui", "system"]
    address: str
    operation: str
    object: str
    params: dict[str, Any] = Field(description="As given, with every secret replaced by ***")
    result: Literal["ok", "error", "denied"]
    status: int | None
    detail: str
    job: str | None


class RootOut(BaseModel):
    path: str
    devices: bool
    default: bool
