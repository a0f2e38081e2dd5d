"""Fix-ups on the migrated copy: make a guest bootable and reachable on its target.

Never on the source and never on a recovery point: the caller hands writable disks that are
the copy (qcow2 overlays whose backing is the point, see ``rehost.vault.fixup``). One
libguestfs appliance launch inspects the copy, applies every fix-up asked for, then inspects
it again, so what a fix-up claims is read back from the copy (an initramfs is listed again
after it is rebuilt), never assumed.

Each fix-up is opt-in, by name (:data:`FIXUPS`). Drivers are added with the guest's own tools
run inside the appliance (``update-initramfs`` or ``dracut``, in a chroot of the guest), so
the initramfs is made the way the distribution makes it. A file a fix-up rewrites is kept as
it was under ``/var/lib/rehost/fixups/`` on the copy. A fix-up that cannot do its work raises
:class:`FixUpError` naming what is missing; one with nothing to do says so and changes
nothing.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rehost.errors import DiskError, RehostError, UsageError
from rehost.guest.config_edits import (
    TO_DHCP,
    console_default_grub,
    console_extlinux,
    console_grub_cfg,
    fstab_specs,
    modules_file,
    root_args,
)
from rehost.guest.config_files import DEVICE_NAME_RE, split_cmdline
from rehost.guest.initramfs import InitramfsError
from rehost.guest.inspect import (
    AGENT_FILES,
    AGENT_PACKAGES,
    Inspection,
    appliance,
    esp_device,
    guest_device,
    inspect_machine,
    list_initrd,
    locate,
    read_text,
    safe_read,
    whole_device,
)

#: the fix-ups, by the name a user gives, in the order they are applied
FIXUPS: dict[str, str] = {
    "initramfs": "add the target's disk and network drivers to the initramfs (the guest's own "
                 "update-initramfs or dracut)",
    "dhcp": "switch the primary interface from a static address to DHCP",
    "fstab": "name filesystems by UUID in /etc/fstab and in root= of the kernel command line",
    "serial-console": "add console=ttyS0,115200 to the kernel command line",
    "remove-agents": "remove the rehost agent and VMware Tools from the copy",
    "uefi-fallback": "copy a UEFI machine's boot loader to /EFI/BOOT/BOOTX64.EFI on its EFI system "
                     "partition (a new VM's firmware starts nothing else)",
}
#: the drivers the initramfs fix-up adds, per target kind (what its boot and NIC need)
DRIVERS: dict[str, tuple[str, ...]] = {
    "local": ("virtio_pci", "virtio_blk", "virtio_net"),
    "azure": ("hv_vmbus", "hv_storvsc", "hv_netvsc"),
}
#: agents removed from a migrated copy (the seed's "uninstall the Mobility service")
REMOVED_AGENTS = ("rehost-agent", "vmware-tools")
CONSOLE = "ttyS0,115200"
#: where a fix-up keeps the files it rewrote, on the copy
ORIGINALS = "/var/lib/rehost/fixups"


class FixUpError(RehostError):
    """A fix-up could not be applied; the copy is left to be thrown away by the caller."""


def parse_fixups(values: Iterable[str]) -> tuple[str, ...]:
    """Names from the user (``initramfs,dhcp`` or repeated, ``all``), in :data:`FIXUPS` order."""
    wanted: set[str] = set()
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if part == "all":
                wanted.update(FIXUPS)
            elif part in FIXUPS:
                wanted.add(part)
            else:
                raise UsageError(f"unknown fix-up {part!r}: choose from {', '.join(FIXUPS)} or all")
    return tuple(n for n in FIXUPS if n in wanted)


def fixup_for(requirement: str) -> str | None:
    """The fix-up that repairs a readiness requirement (by its name), if one does."""
    if requirement.endswith(" driver"):
        return "initramfs"
    return {"DHCP on the primary NIC": "dhcp", "fstab by UUID or LABEL": "fstab",
            "serial console on ttyS0": "serial-console",
            "UEFI boot loader at the fallback path": "uefi-fallback"}.get(requirement)


@dataclass(frozen=True)
class FixUp:
    name: str
    changed: bool
    detail: str
    #: the copy's files it wrote
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class FixUpResult:
    fixups: tuple[FixUp, ...]
    #: the copy as it was, and as the fix-ups left it (inspected in the same launch)
    before: Inspection
    after: Inspection
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"fixups": [asdict(f) for f in self.fixups], "seconds": round(self.seconds, 1)}


def apply_fixups(disks: Sequence[str], fmt: str, kind: str, names: Sequence[str]) -> FixUpResult:
    """Apply ``names`` to the machine whose WRITABLE disks are ``disks`` (disk 0 first), for
    a target of ``kind``; inspect before and after in the same appliance launch."""
    started = time.monotonic()
    g = appliance()
    g.set_memsize(max(int(g.get_memsize()), 1024))  # mkinitramfs and its compressor run in it
    for path in disks:
        g.add_drive_opts(path, format=fmt, readonly=False)
    try:
        try:
            g.launch()
        except RuntimeError as e:
            raise DiskError(f"the libguestfs appliance did not start: {e}") from e
        mine = {dev: i for i, dev in enumerate(g.list_devices())}
        try:
            roots = list(g.inspect_os())
        except RuntimeError:
            roots = []
        filesystems = dict(g.list_filesystems()) if not roots else {}
        sources = tuple(disks)
        before = inspect_machine(g, sources, roots, mine, filesystems)
        if before.os_type != "linux":
            raise FixUpError(f"fix-ups exist for Linux guests only; this one is {before.os_type}"
                             + (f" ({before.product})" if before.product != "unknown" else ""))
        root, _, _, mounts = locate(g, roots, mine, filesystems, [])
        for mp, dev in mounts:
            if whole_device(g, dev) in mine:
                try:
                    g.mount(dev, mp)
                except RuntimeError as e:
                    if mp == "/":
                        raise FixUpError(f"the copy's root filesystem could not be mounted: {e}") from e
        done: list[FixUp] = []
        try:
            for name in names:
                if name in _FIX:
                    done.append(_FIX[name](_Guest(g, kind, before, mine, root)))
        finally:
            g.sync()
            g.umount_all()
        if "uefi-fallback" in names:  # on the ESP alone, mounted where the root was
            done.append(_uefi_fallback(g, before, mine))
        after = inspect_machine(g, sources, roots, mine, filesystems)
        return FixUpResult(tuple(done), before, after, time.monotonic() - started)
    finally:
        try:
            g.shutdown()
        finally:
            g.close()


@dataclass(frozen=True)
class _Guest:
    g: Any
    kind: str
    ins: Inspection
    disks: dict[str, int]
    root: str

    def read(self, path: str) -> str | None:
        return read_text(self.g, path)

    def write(self, path: str, text: str) -> None:
        """Write ``path`` on the copy, keeping what it held under ``ORIGINALS`` (once)."""
        g = self.g
        if g.is_file(path):
            keep = f"{ORIGINALS}{path}"
            if not g.exists(keep):
                g.mkdir_p(keep.rsplit("/", 1)[0])
                g.cp_a(path, keep)
        g.write(path, text.encode())

    def run(self, command: str) -> str:
        """A shell command in the guest's root (a chroot in the appliance): its output; a
        FixUpError with the output's tail when it fails."""
        out = str(self.g.sh(f"export PATH=/usr/sbin:/usr/bin:/sbin:/bin; {{ {command} ; }} 2>&1; "
                            "echo rehost-rc=$?"))
        body, _, rc = out.rstrip().rpartition("rehost-rc=")
        if rc.strip() != "0":
            tail = " | ".join(body.strip().splitlines()[-6:])
            raise FixUpError(f"{command.split()[0]} failed in the guest (exit {rc.strip()}): {tail}")
        return body

    def exists(self, *paths: str) -> str | None:
        return next((p for p in paths if self.g.exists(p)), None)


# ------------------------------------------------------------------------------------------
# the fix-ups


def _initramfs(guest: _Guest) -> FixUp:
    need = DRIVERS.get(guest.kind)
    if not need:
        return FixUp("initramfs", False, f"{guest.kind} targets name no drivers: nothing added")
    k = guest.ins.default_kernel
    if k is None or not k.version:
        raise FixUpError("no kernel with a version found in /boot: the initramfs cannot be rebuilt")
    have = set(k.initrd_modules or ()) | set(k.builtin_modules or ())
    missing = [m for m in need if m not in have]
    if not missing:
        return FixUp("initramfs", False, f"{k.initrd} already carries {', '.join(need)}")
    moddir = next((d for d in (f"/lib/modules/{k.version}", f"/usr/lib/modules/{k.version}")
                   if guest.g.is_dir(d)), None)
    dep = guest.read(f"{moddir}/modules.dep") if moddir else None
    if dep is None:
        raise FixUpError(f"kernel {k.version} has no modules.dep under /lib/modules: its drivers cannot "
                         "be added")
    available = {line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
                 for line in dep.splitlines() if ":" in line}
    absent = [m for m in missing if m not in available]
    if absent:
        raise FixUpError(f"kernel {k.version} has no {', '.join(absent)} module in {moddir}: install a "
                         "kernel that has it on the source, then replicate again")
    version = shlex.quote(k.version)
    if guest.exists("/usr/sbin/update-initramfs", "/sbin/update-initramfs"):
        conf = "/etc/initramfs-tools/modules"
        guest.write(conf, modules_file(guest.read(conf) or "", missing))
        tool = f"update-initramfs -u -k {k.version}"
        guest.run(f"update-initramfs -u -k {version}")
        initrd = k.initrd or f"/boot/initrd.img-{k.version}"
    elif guest.exists("/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"):
        conf = "/etc/dracut.conf.d/90-rehost.conf"
        guest.g.mkdir_p("/etc/dracut.conf.d")
        guest.write(conf, f'add_drivers+=" {" ".join(missing)} "\n')
        initrd = k.initrd or f"/boot/initramfs-{k.version}.img"
        tool = f"dracut -f {initrd} {k.version}"
        guest.run(f"dracut -f {shlex.quote(initrd)} {version}")
    else:
        raise FixUpError("neither initramfs-tools nor dracut is installed in the guest: add "
                         f"{', '.join(missing)} to its initramfs on the source")
    try:  # read back: the claim is what the new initramfs holds
        listing = list_initrd(guest.g, initrd)
    except (InitramfsError, RuntimeError) as e:
        raise FixUpError(f"{tool} ran, but {initrd} cannot be read back: {e}") from e
    carried = set(listing.modules or ())
    still = [m for m in missing if m not in carried]
    if still:
        raise FixUpError(f"{tool} ran, but {initrd} still lacks {', '.join(still)}")
    return FixUp("initramfs", True, f"{', '.join(missing)} added to {initrd} ({tool}; read back: "
                 f"{len(carried)} modules, {', '.join(missing)} among them)", (conf, initrd))


def _dhcp(guest: _Guest) -> FixUp:
    ifaces = [i for i in guest.ins.interfaces if i.method != "loopback"]
    if not guest.ins.network_known or not ifaces:
        raise FixUpError("no network configuration found (ifupdown, netplan, systemd-networkd, "
                         "NetworkManager, ifcfg): nothing to switch to DHCP")
    first = ifaces[0]
    if first.method == "dhcp":
        return FixUp("dhcp", False, f"{first.name} already uses DHCP ({first.source})")
    edit = TO_DHCP.get(first.tool)
    text = guest.read(first.source)
    if edit is None or text is None:
        raise FixUpError(f"{first.name} is configured by {first.tool} in {first.source}: not editable here")
    guest.write(first.source, edit(text, first.name))
    was = ", ".join(first.addresses) or first.method
    note = " (netplan's YAML is rewritten: its comments are gone)" if first.tool == "netplan" else ""
    return FixUp("dhcp", True, f"{first.name}: {was} -> DHCP in {first.source}{note}", (first.source,))


def _fstab(guest: _Guest) -> FixUp:
    names: dict[str, str] = {}
    unresolved: list[str] = []
    specs = [e.spec for e in guest.ins.fstab if e.by == "device"]
    specs += [a.split("=", 1)[1] for e in guest.ins.bootloader.entries for a in split_cmdline(e.cmdline)
              if a.startswith("root=/dev/") and DEVICE_NAME_RE.match(a.split("=", 1)[1])]
    for spec in dict.fromkeys(specs):
        dev = guest_device(guest.g, spec, guest.disks)
        uuid = safe_read(guest.g.vfs_uuid, dev) if dev else ""
        if uuid:
            names[spec] = f"UUID={uuid}"
        else:
            unresolved.append(spec)
    if unresolved:
        raise FixUpError(f"no filesystem UUID found for {', '.join(unresolved)} on the machine's disks")
    if not names:
        return FixUp("fstab", False, "nothing is named by a device name (fstab, root=)")
    files = []
    text = guest.read("/etc/fstab")
    if text is not None and (new := fstab_specs(text, names)) != text:
        guest.write("/etc/fstab", new)
        files.append("/etc/fstab")
    for path in (guest.ins.bootloader.config, "/etc/default/grub"):
        text = guest.read(path) if path else None
        if text is not None and (new := root_args(text, names)) != text:
            guest.write(path, new)
            files.append(path)
    said = ", ".join(f"{k} -> {v}" for k, v in names.items())
    return FixUp("fstab", True, f"{said} in {', '.join(files)}", tuple(files))


def _console(guest: _Guest) -> FixUp:
    if any(c.split(",")[0] == "ttyS0" for c in guest.ins.consoles):
        return FixUp("serial-console", False, f"the command line has a ttyS0 console ({guest.ins.cmdline})")
    bl = guest.ins.bootloader
    edits: list[tuple[str, Callable[[str], str]]]
    if bl.kind == "extlinux" and bl.config:
        edits = [(bl.config, console_extlinux)]
    elif bl.kind == "grub" and bl.config:
        edits = [(bl.config, console_grub_cfg), ("/etc/default/grub", console_default_grub)]
    else:
        raise FixUpError("no boot loader configuration found (extlinux, grub): add console=ttyS0,115200 "
                         "to the kernel command line by hand")
    files = []
    for path, edit in edits:
        text = guest.read(path)
        if text is not None and (new := edit(text)) != text:
            guest.write(path, new)
            files.append(path)
    return FixUp("serial-console", bool(files), f"console={CONSOLE} added in {', '.join(files)}",
                 tuple(files))


def _agents(guest: _Guest) -> FixUp:
    found = [a for a in REMOVED_AGENTS if guest.ins.agents.get(a)]
    if not found:
        return FixUp("remove-agents", False, "no rehost agent and no VMware Tools on the copy")
    said: list[str] = []
    files: list[str] = []
    dpkg = guest.exists("/usr/bin/dpkg")
    rpm = guest.exists("/usr/bin/rpm", "/bin/rpm")
    for agent in found:
        for pkg in AGENT_PACKAGES[agent]:
            q = shlex.quote(pkg)
            if dpkg and "install ok installed" in guest.run(f"dpkg-query -W -f='${{Status}}' {q} || true"):
                guest.run(f"dpkg --purge {q}")
                said.append(f"{pkg} purged (dpkg)")
            elif rpm and guest.run(f"rpm -q {q} >/dev/null && echo yes || true").strip() == "yes":
                guest.run(f"rpm -e {q}")
                said.append(f"{pkg} removed (rpm)")
        unit = f"{agent}.service"
        links = [f"{d}/{unit}" for d in _wants_dirs(guest)]
        for path in [*AGENT_FILES[agent], *links]:
            if guest.g.exists(path) or guest.g.is_symlink(path):
                guest.g.rm_rf(path)
                files.append(path)
        if files:
            said.append(f"{agent}: {len(files)} file(s) removed")
    return FixUp("remove-agents", True, "; ".join(said) or "nothing left to remove", tuple(files))


def _wants_dirs(guest: _Guest) -> list[str]:
    base = "/etc/systemd/system"
    if not guest.g.is_dir(base):
        return []
    return [f"{base}/{n}" for n in guest.g.ls(base) if n.endswith(".wants") and guest.g.is_dir(f"{base}/{n}")]


def _uefi_fallback(g: Any, ins: Inspection, disks: dict[str, int]) -> FixUp:
    """What Debian's ``--force-extra-removable`` does: the distribution's loader folder
    (shim and GRUB with its grub.cfg, or GRUB alone) copied to /EFI/BOOT, the first stage
    named BOOTX64.EFI, so that a firmware with no boot entries for this disk starts it."""
    e = ins.efi
    if e is None:
        return FixUp("uefi-fallback", False, "no EFI system partition: the machine boots with a BIOS")
    if e.fallback:
        return FixUp("uefi-fallback", False, f"/EFI/BOOT/BOOTX64.EFI is on {e.partition} already")
    first = next((p for want in ("shimx64.efi", "grubx64.efi") for p in e.loaders
                  if p.lower().endswith("/" + want)), None)
    if first is None:
        found = ", ".join(e.loaders) or "no loaders"
        raise FixUpError(f"no shimx64.efi or grubx64.efi on {e.partition} ({found}): which loader boots "
                         "this machine is not known")
    dev = esp_device(g, disks)
    if dev is None:
        raise FixUpError(f"the EFI system partition {e.partition} is gone from the copy")
    g.mount(dev, "/")
    try:
        folder = first.rsplit("/", 1)[0]
        top = folder.split("/")[1]
        boot = f"/{top}/BOOT"
        g.mkdir_p(boot)
        copied = []
        for name in g.ls(folder):
            if g.is_file(f"{folder}/{name}"):
                g.cp(f"{folder}/{name}", f"{boot}/{name}")
                copied.append(name)
        g.cp(first, f"{boot}/BOOTX64.EFI")
        g.sync()
    finally:
        g.umount_all()
    return FixUp("uefi-fallback", True, f"{first} copied to {boot}/BOOTX64.EFI on {e.partition}, with "
                 f"{', '.join(copied)} next to it", tuple(f"{boot}/{n}" for n in ["BOOTX64.EFI", *copied]))


_FIX: dict[str, Callable[[_Guest], FixUp]] = {
    "initramfs": _initramfs, "dhcp": _dhcp, "fstab": _fstab, "serial-console": _console,
    "remove-agents": _agents,
}
