"""rehost source add KIND | add-image | add-qemu | add-physical | kinds | verify | map-networks |
passphrase: registering machines. Its own module because ``source add`` lists every kind of
source, and loading every source plugin is what a ``rehost replicate`` should not pay for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from rehost.cli.config_options import config_command
from rehost.cli.context import (
    byte_progress,
    emit_json,
    human,
    open_vault,
    out,
    print_wrapped,
)
from rehost.errors import UsageError
from rehost.replication.retention import parse_duration
from rehost.sources import registry
from rehost.spec import MachineSpec
from rehost.vault import agents, inventory, plans, targets

if TYPE_CHECKING:
    from rehost.sources.physical import Invitation

source_app = typer.Typer(
    help="Register the machines to protect or migrate: rehost source add KIND NAME ... "
    "(kinds and their options: rehost source kinds).", no_args_is_help=True)


class _Kinds(TyperGroup):
    """``source add KIND``: an unknown kind is the registry's one-line error, with the kinds."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # typer's own (vendored) click Context
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            registry.get(args[0])  # raises UsageError naming the kinds there are
        return super().resolve_command(ctx, args)


add_app = typer.Typer(
    cls=_Kinds, help="Register a machine from a source of one KIND; each kind has its own options "
    "(rehost source add KIND --help).", no_args_is_help=True)

def register(app: typer.Typer) -> None:
    for plugin in registry.plugins():
        add_app.command(plugin.kind, help=_kind_help(plugin), no_args_is_help=True)(
            config_command(plugin.config, _adder(plugin.kind), _name_help(plugin)))
    source_app.add_typer(add_app, name="add")
    app.add_typer(source_app, name="source")


def _name_help(plugin: registry.SourcePlugin) -> str:
    hint = f"; {plugin.name_hint}" if plugin.name_hint else ""
    return f"Name of the machine (1-64 letters, digits, '.', '_', '-'{hint})."


def _kind_help(plugin: registry.SourcePlugin) -> str:
    caps = plugin.capabilities
    return (f"{plugin.summary}\n\nChanged blocks: {caps.change_tracking}; shut down at failover: "
            f"{'yes' if caps.can_shutdown else 'no'}; app-consistent points: "
            f"{caps.app_consistent or 'no'}.")


def _adder(kind: str) -> Any:
    def add(ctx: typer.Context, name: str, options: dict[str, Any]) -> None:
        _add(ctx, kind, name, options)

    return add


def _add(ctx: typer.Context, kind: str, name: str, options: dict[str, Any],
         server_url: str | None = None) -> None:
    """Register through the registry (every spelling ends here) and say what was found."""
    if kind == "image" and not options.get("vm") and _add_vapp(ctx, name, options):
        return
    with open_vault(ctx) as vault:
        done = inventory.add_source(vault, kind, "" if name == "-" else name, options)
    if done.invitation is not None:
        _print_invitation(done.invitation, server_url)
        return
    m = done.machine
    out.print(f"registered {m.name}: {len(m.disks)} disk(s), "
              + ", ".join(f"{d.path if d.format == 'qemu' else d.format} {human(d.size)}" for d in m.disks)
              + _hardware(inventory.spec_of(m)), highlight=False)
    if kind == "image":
        _unpack(ctx, m.name)


def _unpack(ctx: typer.Context, name: str) -> None:
    """Compressed or chunked export disks: unpacked into the vault's cache now, with a progress
    bar, rather than silently in the first cycle."""
    with open_vault(ctx) as vault:
        machine = inventory.get_machine(vault, name)
        if not any("+" in d.format for d in machine.disks):
            return
        prepare = getattr(inventory.provider_for(machine, vault), "prepare", None)
        if prepare is None:
            return
        with byte_progress(f"unpacking {name}'s compressed/chunked disks") as bar:
            notes = prepare(inventory.spec_of(machine), bar)
    for note in notes:
        out.print(note, highlight=False)


def _add_vapp(ctx: typer.Context, name: str, options: dict[str, Any]) -> list[str]:
    """A vApp export (an OVA/OVF of several VMs) given alone: register each VM as its own
    machine, NAME-VM ('-': the vApp's id), and say the startup order each one keeps."""
    from rehost.sources import image

    vms = image.vapp_members(options.get("paths") or [])
    if not vms:
        return []
    base = name if name != "-" else image.vapp_name(options["paths"][0])
    out.print(f"{options['paths'][0]} is a vApp of {len(vms)} VMs ({', '.join(vms)}): one machine "
              "each", highlight=False)
    for vm in vms:
        _add(ctx, "image", image.member_name(base, vm), {**options, "vm": vm})
    with open_vault(ctx) as vault:
        starts = [(inventory.spec_of(inventory.get_machine(vault, image.member_name(base, vm)))
                   .settings.get("startup")) for vm in vms]
    order = sorted((tuple(s["order"]), s["start_delay"], vm) for vm, s in zip(vms, starts, strict=True) if s)
    if order:
        out.print("startup order (kept in each machine's source settings for recovery plans): "
                  + "; ".join(f"{'.'.join(map(str, o))}: {image.member_name(base, vm)}"
                              + (f" (+{d} s)" if d else "") for o, d, vm in order), highlight=False)
    return [image.member_name(base, vm) for vm in vms]


def _hardware(spec: MachineSpec) -> str:
    """What the source discovered beyond the disks; nothing where it knew nothing (defaults)."""
    default = MachineSpec(name=spec.name)
    said = [f"{spec.cpus} CPU(s)" if spec.cpus != default.cpus else "",
            f"{spec.memory_mib} MiB" if spec.memory_mib != default.memory_mib else "",
            f"{len(spec.nics)} NIC(s)" if spec.nics else "",
            spec.firmware.value.upper() if spec.firmware != default.firmware else "",
            spec.guest_os or ""]
    return "; " + ", ".join(s for s in said if s) if any(said) else ""


@source_app.command("kinds")
def kinds(as_json: bool = typer.Option(False, "--json")) -> None:
    """The kinds of source, their options and what they can do."""
    if as_json:
        emit_json(registry.describe())
        return
    for plugin in registry.plugins():
        print_wrapped(f"{plugin.kind:9} {plugin.summary}", hanging=" " * 10)
        caps = plugin.capabilities
        shuts = "yes" if caps.can_shutdown else "no"
        print_wrapped(f"changed blocks: {caps.change_tracking}; shut down at failover: {shuts}; "
                      f"app-consistent: {caps.app_consistent or 'no'}", " " * 10, hanging=" " * 12)
        for o in registry.options(plugin.config):
            flag = f"{o.name.upper()}..." if o.argument else o.flag
            need = "required" if o.required else "optional" if o.default is None else f"default {o.default}"
            print_wrapped(f"{flag:16} {o.help} ({need})", " " * 10, hanging=" " * 27)


@source_app.command("verify")
def verify(ctx: typer.Context, name: str = typer.Argument(..., help="The source's name."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """What the vault holds of a source (read here, the source is not contacted): its kind,
    settings and, for one that maps its VM networks (Hyper-V with VMM), each network of its
    machines and the target network a failover attaches it to. Exit status 1 while a network
    is unmapped: a failover of its machine is refused until it is."""
    from rehost.vault.source_check import verify_source

    with open_vault(ctx) as vault:
        _show_source(verify_source(vault, name), as_json)


@source_app.command("map-networks")
def map_networks(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The source's name."),
    pairs: list[str] = typer.Argument(..., help="VMNETWORK=TARGETNET pairs (added to the map, or changed)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Map a source's VM networks (VMM) to target networks; ``rehost source verify`` shows the map."""
    from rehost.vault.source_check import map_networks as update

    with open_vault(ctx) as vault:
        _show_source(update(vault, name, targets.parse_network_map(pairs)), as_json)


def _show_source(report: Any, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_json())
    else:
        out.print(f"source {report.name} ({report.kind})", highlight=False)
        for key, value in sorted(report.settings.items()):
            if key != "network_map" and value not in (None, "", [], {}):
                print_wrapped(f"  {key}: {value}", hanging="    ")
        how = "its own map (every network must be mapped to fail over)" if report.maps_networks \
            else "each machine's --network-map, else the target's first network"
        out.print(f"networks: {how}", highlight=False)
        for line in report.networks:
            dest = line.target_network or ("NOT MAPPED" if report.maps_networks else "the target's default")
            out.print(f"  {line.machine}: {line.network} -> {dest}", highlight=False)
        if not report.networks:
            out.print("  (no NIC known)", highlight=False)
    if not report.ok:
        missing = ", ".join(n.network for n in report.unmapped)
        out.print(f"not mapped: {missing}; rehost source map-networks {report.name} "
                  + " ".join(f"{n.network}=TARGETNET" for n in report.unmapped), highlight=False)
        raise typer.Exit(1)


@source_app.command("add-image")
def add_image(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Machine name (for an OVA, '-' takes the name inside it)."),
    disks: list[Path] = typer.Argument(..., help="Disk images (raw, qcow2, vmdk, vhd, vhdx), or one "
                                       "OVA/OVF export, or one VMware .vmx."),
    vm: str = typer.Option(None, "--vm", help="Of a vApp (an OVA/OVF of several VMs), import only "
                           "this VM (its id). Default: each VM as its own machine, NAME-VM."),
    plan: str = typer.Option(None, "--plan", help="Of a vApp: also create this recovery plan, its "
                             "groups in the vApp's startup order."),
    firmware: str = typer.Option(None, "--firmware", help="bios or uefi (default: from the disk — a GPT "
                                 "disk with an EFI system partition and no BIOS boot code is uefi, "
                                 "e.g. Hyper-V Generation 2 — or what the OVF/VMX says)."),
    replay_log_copy: bool = typer.Option(False, "--replay-log-copy", help="A VHDX whose log was not "
                                         "replayed: replay it on a copy in the vault (never your file)."),
) -> None:
    """Register a machine made of disk image files (a VMware or Hyper-V export, a VM folder's
    .vmx). A vApp registers one machine per VM and keeps its startup order.

    The same as: rehost source add image NAME DISK... [--vm VM] [--firmware F]"""
    if plan is not None:
        if vm is not None:
            raise UsageError("--plan makes a plan of a whole vApp: not with --vm")
        with open_vault(ctx) as vault:
            plans.check_free(vault, plan)  # before anything is registered
    options = {"paths": [str(d) for d in disks], "vm": vm, "firmware": firmware,
               "replay_log_copy": replay_log_copy}
    if plan is None:
        _add(ctx, "image", name, options)
        return
    members = _add_vapp(ctx, name, options)
    if not members:
        raise UsageError(f"--plan: {disks[0]} is not a vApp (an OVA/OVF of several VMs)")
    with open_vault(ctx) as vault:
        made = plans.create_from_startup(vault, plan, members)
    out.print(f"created plan {plan}: " + "; ".join(f"group {g.number}: {', '.join(g.machines)}"
                                                   for g in made.groups), highlight=False, markup=False)


@source_app.command("add-qemu")
def add_qemu(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Machine name."),
    qmp: Path = typer.Option(..., "--qmp", help="A QMP socket of the running QEMU (one rehost can own)."),
    guest_agent: Path = typer.Option(None, "--guest-agent", help="qemu-guest-agent socket, for "
                                     "app-consistent points."),
    granularity: int = typer.Option(None, help="Dirty-bitmap granularity in bytes (default 4096)."),
) -> None:
    """Register a running KVM/QEMU VM; its disks are discovered over QMP, no restart needed.

    The same as: rehost source add qemu NAME --qmp-socket PATH"""
    _add(ctx, "qemu", name, {"qmp_socket": str(qmp), "guest_agent": guest_agent and str(guest_agent),
                             "granularity": granularity})


@source_app.command("add-physical")
def add_physical(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Machine name (the name its agent's certificate carries)."),
    ttl: str = typer.Option("1h", "--expires", help="How long the one-time passphrase is valid."),
    server: str = typer.Option(None, "--server-url", help="Enrollment URL agents reach "
                               "(default https://<this host>:8744, where rehost serve listens)."),
) -> None:
    """Register a physical (or any unmanaged) machine: prints its agent's one-time passphrase.

    Prints the command to run on it too; its disks come with its agent's registration. The
    same as: rehost source add physical NAME"""
    _add(ctx, agents.KIND, name, {"expires": ttl}, server)


@source_app.command("passphrase")
def passphrase(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A machine registered with add-physical."),
    ttl: str = typer.Option("1h", "--expires", help="How long the one-time passphrase is valid."),
    server: str = typer.Option(None, "--server-url", help="Enrollment URL agents reach."),
) -> None:
    """Issue a new one-time passphrase (the previous expired, or the machine was rebuilt)."""
    with open_vault(ctx) as vault:
        invitation = agents.reissue_passphrase(vault, name, parse_duration(ttl).total_seconds())
    _print_invitation(invitation, server)


def _print_invitation(invitation: Invitation, server: str | None) -> None:
    url = server or agents.enrollment_url()
    out.print(f"registered {invitation.machine}: waiting for its agent", highlight=False)
    out.print(f"one-time passphrase (valid {invitation.expires_in_s / 60:.0f} min, shown once): "
              f"{invitation.passphrase}", highlight=False)
    out.print(f"server fingerprint: {invitation.fingerprint}", highlight=False)
    out.print(f"on {invitation.machine}, as root:\n  {invitation.command(url)}",
              highlight=False, soft_wrap=True)
