"""rehost readiness NAME [--target T] [--point P] [--json]: will the machine boot there?"""

from __future__ import annotations

from typing import Any

import typer

from rehost.cli.context import emit_json, open_vault, out
from rehost.guest.fixups import fixup_for
from rehost.guest.inspect import Inspection
from rehost.vault import readiness as vault_readiness

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def register(app: typer.Typer) -> None:
    app.command("readiness")(readiness)


def readiness(
    ctx: typer.Context, name: str,
    target: str = typer.Option(None, help="A target's name (default: the machine's target)."),
    point: str = typer.Option("latest", help="latest, latest-app-consistent or a point id."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON."),
) -> None:
    """Will NAME boot on its target? Inspects a recovery point offline (once per point, then
    cached) and checks each requirement of the target: pass, warn or fail, with the fix."""
    with open_vault(ctx) as vault:
        report = vault_readiness.readiness(vault, name, target=target, point=point)
    if as_json:
        emit_json(report.to_json())
    else:
        show(report.to_json())


def show(data: dict[str, Any]) -> None:
    """Print a readiness report (as ReadinessReport.to_json and the API give it)."""
    ins = Inspection.from_json(data["inspection"])
    how = "cached inspection" if data["cached"] else f"inspected in {ins.seconds:.0f}s"
    _say(f"{data['machine']} on target {data['target']} ({data['target_kind']}), point "
         f"{data['point'][:12]} ({how}): {data['verdict']}")
    fixups: list[str] = []
    for q in data["requirements"]:
        _say(f"  {_MARK[q['status']]}  {q['name']}: {q['detail']}")
        if q["fix"] and q["status"] != "pass":
            _say(f"        fix: {q['fix']}")
        if q["status"] != "pass" and (f := fixup_for(q["name"])) and f not in fixups:
            fixups.append(f)
    if fixups:
        _say(f"  or on the copy, not the source: rehost failover {data['machine']} [--test] "
             f"--fix-up {','.join(fixups)}")
    _say("")
    for line in facts(ins):
        _say(line)


def _say(text: str) -> None:
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def facts(ins: Inspection) -> list[str]:
    """The inspection's findings, one line each."""
    lines = [f"os: {ins.os_type} {ins.distro} {ins.version} ({ins.product}), root filesystem on "
             f"{ins.root_device or 'an unknown device'}"]
    for k in ins.kernels:
        mods = "unknown" if k.initrd_modules is None else f"{len(k.initrd_modules)} modules"
        err = f" ({k.initrd_error})" if k.initrd_error else ""
        lines.append(f"kernel: {k.path} {k.version or 'version unknown'}; initramfs {k.initrd or 'none'}: "
                     f"{mods}{err}")
    bl = ins.bootloader
    loader = f"boot loader: {bl.kind} {bl.config}".rstrip()
    lines.append(f"{loader}; command line: {ins.cmdline or 'unknown'}")
    if not ins.network_known:
        lines.append("network: no configuration found")
    for i in ins.interfaces:
        addr = f" {', '.join(i.addresses)}" if i.addresses else ""
        lines.append(f"network: {i.name} {i.method}{addr} ({i.tool} {i.source})")
    for e in ins.fstab:
        lines.append(f"fstab: {e.spec} {e.mountpoint} {e.fstype} (by {e.by})")
    for s in ins.swaps:
        where = "disk unknown" if s.disk is None else f"disk {s.disk}"
        where += " (OS disk)" if s.on_os_disk else ""
        lines.append(f"swap: {s.spec} on {where}")
    if ins.root_free_bytes is not None and ins.root_size_bytes is not None:
        free, size = ins.root_free_bytes / 2**20, ins.root_size_bytes / 2**20
        lines.append(f"root fs: {free:.0f} MiB free of {size:.0f} MiB")
    if ins.agents:
        found = [a for a, v in ins.agents.items() if v]
        lines.append(f"agents: {', '.join(found) or 'none'} (looked for {', '.join(ins.agents)})")
    for c in ins.not_checked:
        lines.append(f"not checked yet: {c}")
    for n in ins.notes:
        lines.append(f"note: {n}")
    return lines
