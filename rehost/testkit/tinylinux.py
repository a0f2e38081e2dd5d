"""Build a tiny bootable Linux disk image offline, from the host's Debian packages.

Why: replication, failover and boot verification must be tested against a disk that really
boots, and whose boot proves the replicated *data* arrived intact — not just that some bytes
were copied. The image is small (64 MiB by default, ~10 MB used) so a replication cycle takes
seconds, and it boots under TCG in about ten seconds.

Layout (raw image):
  MBR: syslinux ``mbr.bin`` + msdos partition table, partition 1 (bootable) = ext4.
  Or, with ``firmware="uefi"`` (a Hyper-V Generation 2 or VMware EFI machine): a GPT label,
  partition 1 = the same ext4 root, partition 2 = an EFI system partition (FAT) holding
  ``/EFI/BOOT/BOOTX64.EFI``, a standalone GRUB (``grub-mkstandalone``, Debian's
  grub-efi-amd64-bin) whose built-in grub.cfg finds the root by its label and boots the same
  kernel and initramfs on the serial console; no BIOS boot code at all (OVMF boots it).
  ext4 root: ``/boot/vmlinuz`` (Debian's kernel), ``/boot/initrd.img`` (busybox + the few
  modules we need), ``/boot/extlinux/`` (extlinux), ``/rehost-marker`` (the text the guest
  prints), ``/rehost-mode`` (``poweroff`` or ``stay``), ``/rehost-payload`` (1 MiB of
  pseudo-random data) with ``/rehost-sums`` (its sha256, checked at boot).

At boot the initramfs' ``/init`` loads virtio/ext4 modules, mounts partition 1 read-only,
checks ``/rehost-sums``, and prints ``REHOST-BOOT-OK marker=<marker>`` on the serial console —
only after the mount and checks succeeded, so the line proves the disk's data is intact.
Then it powers off (default) or, in *stay* mode, keeps running with the root read-write,
prints ``REHOST-READY`` and runs a shell on the console (ACPI power button => clean poweroff).

Network and service (stay mode; set up *before* the boot marker, so a guest that printed
``REHOST-BOOT-OK`` answers at once): when the VM has a NIC (``eth0``; ``virtio_net`` is in
the initramfs) /init runs busybox ``udhcpc -i eth0 -n -q -t 3 -T 1`` with the event script
``/etc/udhcpc.script`` and prints ``REHOST-NET ip=ADDR`` (``REHOST-NET none`` without a
lease); without a NIC nothing is tried. Then busybox ``httpd -p 80 -h /www`` starts
(``REHOST-HTTP port=80``): ``/`` shows ``REHOST-WEB marker=MARKER``; CGI scripts
``/cgi-bin/get?KEY`` (the stored value, 404 if none), ``/cgi-bin/set?KEY=VALUE`` (URL-decoded,
kept on the root disk in ``/var/lib/rehost-kv/KEY``, synced) and ``/cgi-bin/fetch?URL`` (what
the guest's own ``wget`` gets from URL, 502 with the error otherwise: shows what a guest
reaches over its network). The poweroff mode has neither (it exits right after the marker).
The mode comes from the kernel command line (``rehost.stay=1``/``0``, see the extlinux labels
``rehost-stay``/``rehost-poweroff``) or else from ``/rehost-mode`` — the file is the easy knob,
since nobody types at the extlinux prompt in a test.

Guest agent (``build_tiny_linux(guest_agent=True)``, the default): the initramfs also carries
Debian's ``qemu-ga`` with the libraries ``ldd`` lists (+2.7 MB gzip'ed) and ``virtio_console``.
In stay mode, when the VM has a ``virtserialport`` named ``org.qemu.guest_agent.0``
(``QemuVM(guest_agent=True)``), /init links ``/dev/virtio-ports/org.qemu.guest_agent.0`` from
sysfs (no udev here), starts ``qemu-ga -m virtio-serial -t /var/run/qemu-ga`` and prints
``REHOST-AGENT`` before ``REHOST-READY``. It freezes ``/mnt`` (the only mount with a block
device in ``/proc/self/mountinfo``; the initramfs root has major 0 and is skipped).
``guest-shutdown`` runs ``/sbin/shutdown -h -P +0``, which busybox lacks: a script answers at
once and powers off from the background, like the ACPI button handler.
Every image carries ``/bin/rehost-churn MBPS SECONDS [FILE_MIB [FILE]]``: 1 MiB random blocks
at random offsets of ``/mnt/rehost-churn.dat`` (16 MiB), fsync'ed, paced to MBPS (RPO tests;
~38 MiB/s top speed under TCG on the CI host).

Traps this module handles (verified on Debian 12):
  * extlinux cannot boot ext4 with ``64bit``, ``metadata_csum_seed`` or ``orphan_file``;
    it needs 4 KiB blocks. The kernel is copied in after mounting, not via ``mke2fs -d``.
  * ``virtio_ring`` must be loaded before ``virtio``; ext4/jbd2 need ``crc32c`` (a module
    softdep, so ``modules.dep`` alone misses it) before mounting a ``metadata_csum`` fs.
  * The initramfs needs ``/dev/console`` inside it or /init runs without stdout.
  * Loop partition nodes can appear late (or never in a container with a static /dev):
    wait, then ``partx -a``, then ``mknod`` from sysfs.

Building needs root (losetup, mount). ``set_marker``/``read_marker``/``write_files`` work
on raw images only (use ``qemu-img convert`` for others).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rehost.errors import RehostError
from rehost.testkit.diskimage import (
    MBR_CANDIDATES,
    DiskImageError,
    create_gpt_disk,
    create_msdos_disk,
    first_existing,
    format_extlinux_ext4,
    loop_device,
    mounted_device,
    mounted_root,
    partition_extent,
    require_root,
    run_tool,
    wait_partition,
    write_syslinux_mbr,
)

BOOT_OK_PREFIX = "REHOST-BOOT-OK"
BOOT_FAIL_PREFIX = "REHOST-BOOT-FAIL"
READY_LINE = "REHOST-READY"
POWERDOWN_LINE = "REHOST-POWERDOWN"

MARKER_PATH = "rehost-marker"
MODE_PATH = "rehost-mode"
PAYLOAD_PATH = "rehost-payload"
SUMS_PATH = "rehost-sums"

Mode = Literal["poweroff", "stay"]

#: Modules the guest needs; their hard and soft dependencies are added automatically.
#: ``button``+``evdev`` let busybox acpid see the ACPI power button (graceful QMP powerdown).
BASE_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "button",
    "evdev",
    "virtio_net",  # the NICs' MACs on REHOST-MACHINE: what a target gave the machine
)

_MARKER_RE = re.compile(r"[!-~]{1,200}")
_MIB = 1024 * 1024
_PART_START = _MIB  # partition 1 starts at 1 MiB (sector 2048), as parted aligns it

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


#: the image helpers' error: building or editing a test image failed
TinyLinuxError = DiskImageError


# --------------------------------------------------------------------------------------------
# small helpers






def _check_marker(marker: str) -> None:
    # The guest prints it in one line and tests match it with \S+: no spaces, plain ASCII.
    if not _MARKER_RE.fullmatch(marker):
        raise TinyLinuxError(
            f"marker {marker!r} must be 1-200 printable ASCII characters without spaces"
        )




# --------------------------------------------------------------------------------------------
# kernel and modules


@dataclass(frozen=True)
class Kernel:
    """A kernel image and its module tree (``/lib/modules/VERSION``)."""

    version: str
    image: Path
    modules_dir: Path


def find_kernel(version: str | None = None) -> Kernel:
    """The newest installed kernel with modules (or ``version``): the one we ship in the image."""
    if version is None:
        versions = sorted(
            (p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")),
            key=_version_key,
        )
        versions = [v for v in versions if Path("/lib/modules", v, "modules.dep").exists()]
        if not versions:
            raise TinyLinuxError("no kernel found: install linux-image-amd64")
        version = versions[-1]
    kernel = Kernel(version, Path("/boot", f"vmlinuz-{version}"), Path("/lib/modules", version))
    if not kernel.image.exists() or not (kernel.modules_dir / "modules.dep").exists():
        raise TinyLinuxError(f"kernel {version} or its modules are missing")
    return kernel


def _version_key(v: str) -> list[tuple[int, int, str]]:
    return [(1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.-]", v)]


def _modname(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def resolve_modules(modules_dir: Path, wanted: Iterable[str]) -> list[Path]:
    """Module files for ``wanted`` plus all dependencies, in a valid load order.

    Why not just ``modules.dep``: ext4 and jbd2 need ``crc32c`` only through a *softdep*
    (``modules.softdep``, naming an alias), so we also follow softdeps, resolving aliases
    via ``modules.alias`` and preferring the ``*_generic`` implementation (works on any CPU,
    including TCG's). Builtin modules (``modules.builtin``) are skipped.
    """
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        name = _modname(mod)
        paths[name] = mod
        deps[name] = [_modname(d) for d in rest.split()]

    aliases: dict[str, list[str]] = {}
    alias_file = modules_dir / "modules.alias"
    if alias_file.exists():
        for line in alias_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                aliases.setdefault(parts[1], []).append(parts[2].replace("-", "_"))

    def resolve_alias(name: str) -> str | None:
        n = name.replace("-", "_")
        if n in paths:
            return n
        cands = [c for c in aliases.get(name, []) if c in paths]
        if not cands:
            return None
        generic = [c for c in cands if c.endswith("_generic")]
        return (generic or cands)[0]

    softpre: dict[str, list[str]] = {}
    soft_file = modules_dir / "modules.softdep"
    if soft_file.exists():
        for line in soft_file.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[0] != "softdep":
                continue
            name, section = _modname(parts[1]), ""
            for tok in parts[2:]:
                if tok.endswith(":"):
                    section = tok[:-1]
                elif section == "pre":
                    softpre.setdefault(name, []).append(tok)

    builtin: set[str] = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.exists():
        builtin = {_modname(line) for line in builtin_file.read_text().split()}

    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, required: bool) -> None:
        resolved = resolve_alias(name)
        if resolved is None:
            if name.replace("-", "_") in builtin or not required:
                return
            raise TinyLinuxError(f"kernel module {name} not found in {modules_dir}")
        if state.get(resolved) == 2:
            return
        if state.get(resolved) == 1:
            raise TinyLinuxError(f"module dependency cycle at {resolved}")
        state[resolved] = 1
        for pre in softpre.get(resolved, []):
            visit(pre, required=False)
        for dep in deps.get(resolved, []):
            visit(dep, required=True)
        state[resolved] = 2
        order.append(resolved)

    for w in wanted:
        visit(w, required=True)
    return [modules_dir / paths[m] for m in order]


# --------------------------------------------------------------------------------------------
# initramfs (newc cpio written here: deterministic, and /dev/console needs no mknod)


class _Cpio:
    """Minimal ``newc`` cpio writer — all the kernel's initramfs unpacker needs."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(name_b), 0,
        ]  # fmt: skip
        self._ino += 1
        self._buf += b"070701" + b"".join(b"%08X" % f for f in fields) + name_b
        self._pad()
        self._buf += data
        self._pad()

    def _pad(self) -> None:
        self._buf += b"\0" * (-len(self._buf) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf += b"\0" * (-len(self._buf) % 512)
        return bytes(self._buf)


INIT_SCRIPT = r"""#!/bin/sh
# rehost tiny Linux /init (PID 1). Prints the boot marker only after the root disk mounted
# and its checksums verified, so the marker proves the disk's data is intact.
export PATH=/bin HOME=/ PS1='rehost# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "REHOST-BOOT-FAIL $*"
    sync
    poweroff -f
    sleep 3600
}

# qemu-guest-agent, when the image carries it and the VM has its virtio-serial port
# (QEMU: -device virtserialport,name=org.qemu.guest_agent.0). Without udev nobody makes
# /dev/virtio-ports/NAME, so we link it from sysfs. Started before REHOST-READY, so READY
# means the agent is listening. It freezes what /proc/self/mountinfo lists with a real
# block device: /mnt (the initramfs root has major 0 and is skipped).
start_guest_agent() {
    [ -x /bin/qemu-ga ] || return 0
    has_console=""
    for d in /sys/bus/virtio/devices/*; do
        [ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && has_console=1
    done
    [ -n "$has_console" ] || return 0
    port=""
    i=0
    while [ -z "$port" ] && [ $i -lt 100 ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port="/dev/${p##*/}"
        done
        [ -n "$port" ] && [ -c "$port" ] || { port=""; usleep 50000; }
        i=$((i + 1))
    done
    if [ -z "$port" ]; then
        echo "rehost-init: no org.qemu.guest_agent.0 port, guest agent not started"
        return 0
    fi
    mkdir -p /dev/virtio-ports /var/run/qemu-ga
    ln -sf "$port" /dev/virtio-ports/org.qemu.guest_agent.0
    qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
        -t /var/run/qemu-ga -l /var/log/qemu-ga.log </dev/null >/dev/null 2>&1 &
    echo "REHOST-AGENT pid=$! port=$port"
}

# Network (stay mode): when the VM has a NIC (eth0; none with -nic none, so such guests lose
# no time), ask DHCP for an address: busybox udhcpc, 3 tries 1 s apart, its event script
# /etc/udhcpc.script sets address, netmask and default route. Prints REHOST-NET ip=ADDR
# or REHOST-NET none (no lease).
start_network() {
    ip link set lo up
    [ -e /sys/class/net/eth0 ] || return 0
    ip link set eth0 up
    addr=""
    if udhcpc -i eth0 -n -q -t 3 -T 1 -s /etc/udhcpc.script >/var/log/udhcpc.log 2>&1; then
        addr="$(cat /var/run/udhcpc.eth0.ip 2>/dev/null)"
    fi
    if [ -n "$addr" ]; then echo "REHOST-NET ip=$addr"; else echo "REHOST-NET none"; fi
}

# The test service (stay mode): busybox httpd on port 80 serving /www: index.html with the
# marker, CGI scripts get?KEY, set?KEY=VALUE (values kept on the root disk under
# /var/lib/rehost-kv) and fetch?URL (what this guest's wget gets from URL).
start_http() {
    mkdir -p /mnt/var/lib/rehost-kv /var/lib
    ln -sfn /mnt/var/lib/rehost-kv /var/lib/rehost-kv
    printf '<!doctype html>\n<title>rehost %s</title>\n<p>REHOST-WEB marker=%s</p>\n' \
        "$1" "$1" > /www/index.html
    httpd -p 80 -h /www </dev/null >/dev/null 2>&1 && echo "REHOST-HTTP port=80"
}

for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m.ko" || echo "rehost-init: insmod $m failed"
done

root=/dev/vda1
stay=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rehost.root=*) root="${arg#rehost.root=}" ;;
        rehost.stay=*) stay="${arg#rehost.stay=}" ;;
    esac
done

# Wait for the root partition; fall back to other bus names (sd/nvme/xen) when the disk
# is attached differently than virtio (their drivers must be in the initramfs, see
# build_tiny_linux(extra_modules=...)).
i=0
found=""
while [ -z "$found" ] && [ $i -lt 200 ]; do
    for dev in "$root" /dev/vda1 /dev/sda1 /dev/nvme0n1p1 /dev/xvda1; do
        if [ -b "$dev" ]; then found="$dev"; break; fi
    done
    [ -n "$found" ] || usleep 50000
    i=$((i + 1))
done
[ -n "$found" ] || fail "root device $root did not appear"
root="$found"

mount -t ext4 -o ro "$root" /mnt || fail "cannot mount $root"
if [ -z "$stay" ]; then
    case "$(cat /mnt/rehost-mode 2>/dev/null)" in
        stay*) stay=1 ;;
        *) stay=0 ;;
    esac
fi
if [ -f /mnt/rehost-sums ]; then
    (cd /mnt && sha256sum -c -s rehost-sums) || fail "checksum mismatch in /rehost-sums"
fi
[ -f /mnt/rehost-marker ] || fail "no /rehost-marker on $root"
marker="$(cat /mnt/rehost-marker)"
dmesg -n 1
# the machine as the guest sees it, so a test can hold a target to the machine's spec: CPUs
# online, RAM in MiB (the SMBIOS memory devices, type 17: what the hypervisor says it gave;
# without them the firmware's "System RAM" ranges, a few hundred KiB short), and each MAC
cpus=$(grep -c '^processor' /proc/cpuinfo)
mib=0
for e in /sys/firmware/dmi/entries/17-*; do
    size=$(od -An -tu2 -j12 -N2 "$e/raw" 2>/dev/null | tr -d ' ')
    [ -n "$size" ] && [ "$size" -lt 32767 ] && mib=$((mib + size))
done
if [ "$mib" = 0 ]; then
    ram=0
    for e in /sys/firmware/memmap/*; do
        [ "$(cat "$e/type" 2>/dev/null)" = "System RAM" ] || continue
        ram=$((ram + $(cat "$e/end") - $(cat "$e/start") + 1))
    done
    mib=$(( (ram + 1048575) / 1048576 ))
fi
macs=""
for n in /sys/class/net/*; do
    [ "${n##*/}" = lo ] || macs="$macs${macs:+,}$(cat "$n/address")"
done
echo "REHOST-MACHINE cpus=$cpus memory_mib=$mib macs=${macs:-none}"
# stay mode: the root read-write, the network and the HTTP service are up before the
# marker, so whoever sees REHOST-BOOT-OK can talk to the guest at once
if [ "$stay" = 1 ]; then
    mount -o remount,rw /mnt || fail "cannot remount $root read-write"
    start_network
    start_http "$marker"
fi
echo "REHOST-BOOT-OK marker=$marker"

if [ "$stay" != 1 ]; then
    umount /mnt
    poweroff -f
    sleep 3600
fi

acpid -c /etc/acpi -l /var/log/acpid.log
start_guest_agent
echo "REHOST-READY root=$root"
while true; do
    setsid cttyhack sh
    sleep 1
done
"""

POWERDOWN_SCRIPT = r"""#!/bin/sh
# ACPI power button (QMP system_powerdown): flush and unmount the root disk, then power off.
echo "REHOST-POWERDOWN" > /dev/console
sync
cd /
umount /mnt 2>/dev/null || mount -o remount,ro /mnt
poweroff -f
"""

SHUTDOWN_SCRIPT = r"""#!/bin/sh
# /sbin/shutdown for qemu-ga's guest-shutdown, which runs `shutdown -h -P|-H|-r +0 MSG` and
# waits for it: answer at once and power off from the background, like the ACPI button does.
action=poweroff
for a in "$@"; do
    case "$a" in
        -H) action=halt ;;
        -r) action=reboot ;;
    esac
done
(
    sleep 0.2
    echo "REHOST-POWERDOWN" > /dev/console
    sync
    cd /
    umount /mnt 2>/dev/null || mount -o remount,ro /mnt
    $action -f
) </dev/null >/dev/null 2>&1 &
exit 0
"""

CHURN_SCRIPT = r"""#!/bin/sh
# rehost-churn MBPS SECONDS [FILE_MIB [FILE]]: for SECONDS, write 1 MiB blocks of
# /dev/urandom at random MiB offsets of FILE (default /mnt/rehost-churn.dat, FILE_MIB MiB,
# default 16), fsync'ed one by one, paced to MBPS MiB/s (decimals allowed). When the machine
# cannot keep up it writes back to back. Prints "rehost-churn: wrote N MiB in S s ...".
usage() { echo "usage: rehost-churn MBPS SECONDS [FILE_MIB [FILE]]" >&2; exit 2; }
[ $# -ge 2 ] || usage
rate=$1
secs=$2
size=${3:-16}
file=${4:-/mnt/rehost-churn.dat}
case "$secs$size" in *[!0-9]*) usage ;; esac
[ "$size" -gt 0 ] || usage
# centiseconds between blocks; /proc/uptime has two decimals
interval=$(awk -v r="$rate" 'BEGIN { if (r + 0 <= 0) exit 1; printf "%d", 100 / r }') || usage
now() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" -lt $((size * 1048576)) ]; then
    dd if=/dev/zero of="$file" bs=1M count=0 seek="$size" 2>/dev/null || exit 1
fi
start=$(now)
end=$((start + secs * 100))
n=0
while :; do
    t=$(now)
    [ "$t" -lt "$end" ] || break
    due=$((start + n * interval))
    if [ "$t" -lt "$due" ]; then
        wait_cs=$((due - t))
        [ $((t + wait_cs)) -le "$end" ] || wait_cs=$((end - t))
        usleep $((wait_cs * 10000))
        continue
    fi
    dd if=/dev/urandom of="$file" bs=1M count=1 seek=$((RANDOM % size)) \
        iflag=fullblock conv=notrunc,fsync 2>/dev/null \
        || { echo "rehost-churn: write to $file failed" >&2; exit 1; }
    n=$((n + 1))
done
el=$(($(now) - start))
printf 'rehost-churn: wrote %d MiB in %d.%02d s to %s\n' "$n" $((el / 100)) $((el % 100)) "$file"
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# busybox udhcpc's event script: $interface $ip $subnet $router $dns come from the lease
PATH=/bin
case "$1" in
    deconfig)
        ifconfig "$interface" 0.0.0.0 up
        ;;
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        ip route del default dev "$interface" 2>/dev/null
        for r in $router; do
            route add default gw "$r" dev "$interface" && break
        done
        : > /etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
        echo "$ip" > "/var/run/udhcpc.$interface.ip"
        ;;
esac
exit 0
"""

#: Where the HTTP service keeps values (a folder of the root disk, mounted at /mnt).
KV_DIR = "var/lib/rehost-kv"

_CGI_HEAD = r"""#!/bin/sh
# rehost tiny Linux HTTP service (busybox httpd CGI); QUERY_STRING is what follows the "?"
PATH=/bin
reply() {  # STATUS, then the body on stdin
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n' "$1"
    cat
}
key_ok() {
    case "$1" in ''|.*|*[!A-Za-z0-9._-]*) return 1 ;; esac
}
kv=/var/lib/rehost-kv
"""

CGI_GET = _CGI_HEAD + r"""# get?KEY: the stored value, as it was stored
key="$(httpd -d "$QUERY_STRING")"
key_ok "$key" || { echo "bad key" | reply "400 Bad Request"; exit 0; }
[ -f "$kv/$key" ] || { echo "no such key: $key" | reply "404 Not Found"; exit 0; }
reply "200 OK" < "$kv/$key"
"""

CGI_SET = _CGI_HEAD + r"""# set?KEY=VALUE: store VALUE (URL-decoded) under KEY on the root disk, synced
key="$(httpd -d "${QUERY_STRING%%=*}")"
case "$QUERY_STRING" in *=*) ;; *) echo "use set?KEY=VALUE" | reply "400 Bad Request"; exit 0 ;; esac
value="$(httpd -d "${QUERY_STRING#*=}")"
key_ok "$key" || { echo "bad key" | reply "400 Bad Request"; exit 0; }
mkdir -p "$kv"
printf '%s' "$value" > "$kv/.$key.tmp" && mv "$kv/.$key.tmp" "$kv/$key" && sync \
    || { echo "cannot store $key" | reply "500 Internal Server Error"; exit 0; }
echo "stored $key" | reply "200 OK"
"""

CGI_FETCH = _CGI_HEAD + r"""# fetch?URL: what this guest gets from URL (busybox wget), to show what it reaches
url="$(httpd -d "$QUERY_STRING")"
[ -n "$url" ] || { echo "use fetch?URL" | reply "400 Bad Request"; exit 0; }
out=/tmp/fetch.$$
# Debian's busybox 1.35 wget segfaults with -T: the timeout applet bounds it instead
if timeout 15 wget -q -O "$out" "$url" 2>"$out.err"; then
    reply "200 OK" < "$out"
else
    { echo "fetching $url failed"; cat "$out.err"; } | reply "502 Bad Gateway"
fi
rm -f "$out" "$out.err"
"""

#: Where qemu-ga lives on the build host (Debian package ``qemu-guest-agent``).
QEMU_GA_CANDIDATES = ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga")
#: Kernel modules the guest agent needs (its virtio-serial port).
GUEST_AGENT_MODULES: tuple[str, ...] = ("virtio_console",)


def find_qemu_ga() -> Path | None:
    """The host's ``qemu-ga`` binary, or None when ``qemu-guest-agent`` is not installed."""
    for c in QEMU_GA_CANDIDATES:
        if os.path.exists(c):
            return Path(c)
    return None


def _shared_libraries(binary: Path) -> dict[str, Path]:
    """The libraries a dynamic binary loads (``ldd``): path the loader looks for -> file.

    The loader itself (``/lib64/ld-linux-x86-64.so.2``) is included; libraries are stored
    under the path ``ldd`` reports (the soname), read through symlinks.
    """
    out = run_tool(["ldd", binary])
    libs: dict[str, Path] = {}
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].split()
            if not target or not target[0].startswith("/"):
                if "not found" in line:
                    raise TinyLinuxError(f"{binary}: {line}")
                continue  # linux-vdso
            libs[target[0]] = Path(target[0]).resolve()
        elif line.startswith("/"):
            path = line.split()[0]
            libs[path] = Path(path).resolve()
    return libs


def build_initramfs(
    kernel: Kernel, *, extra_modules: Sequence[str] = (), guest_agent: bool = False
) -> bytes:
    """A gzip'ed busybox initramfs carrying ``/init`` and only the modules it needs.

    Why tiny: the whole image should fit in 64 MiB (24 MiB works) so replication cycles are
    quick. Modules are stored flat (``/lib/modules/NAME.ko``) with an explicit load order,
    because PID 1 loads them with plain ``insmod`` (no modprobe/depmod state to get wrong).
    """
    busybox = first_existing(_BUSYBOX_CANDIDATES, "busybox (install busybox-static)")
    applets = run_tool([busybox, "--list"]).split()
    agent_modules = GUEST_AGENT_MODULES if guest_agent else ()
    modules = resolve_modules(kernel.modules_dir, (*BASE_MODULES, *agent_modules, *extra_modules))
    qemu_ga = find_qemu_ga() if guest_agent else None
    if guest_agent and qemu_ga is None:
        raise TinyLinuxError(
            "qemu-ga not found: install qemu-guest-agent (scripts/install) or build with "
            "guest_agent=False"
        )

    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "tmp", "etc", "etc/acpi", "etc/acpi/PWRF",
              "lib", "lib/modules", "var", "var/log", "var/run", "root", "www",
              "www/cgi-bin"):  # fmt: skip
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.symlink("sbin", "bin")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWERDOWN_SCRIPT.encode(), 0o755)
    cpio.file("bin/shutdown", SHUTDOWN_SCRIPT.encode(), 0o755)  # busybox has none
    cpio.file("bin/rehost-churn", CHURN_SCRIPT.encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("www/cgi-bin/get", CGI_GET.encode(), 0o755)
    cpio.file("www/cgi-bin/set", CGI_SET.encode(), 0o755)
    cpio.file("www/cgi-bin/fetch", CGI_FETCH.encode(), 0o755)
    if qemu_ga is not None:
        cpio.file("bin/qemu-ga", qemu_ga.read_bytes(), 0o755)
        made = {"bin", "lib"}
        for dest, src in sorted(_shared_libraries(qemu_ga).items()):
            rel = dest.lstrip("/")
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    cpio.dir(d)
                    made.add(d)
            cpio.file(rel, src.read_bytes(), 0o755)
    names = []
    for mod in modules:
        name = _modname(str(mod))
        data = mod.read_bytes()
        if mod.suffix != ".ko":  # compressed module: busybox insmod wants it plain
            data = _decompress_module(mod)
        cpio.file(f"lib/modules/{name}.ko", data)
        names.append(name)
    cpio.file("lib/modules/load-order", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _decompress_module(path: Path) -> bytes:
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout


def extlinux_conf(root_device: str = "/dev/vda1", *, default_label: str = "rehost") -> str:
    """Three labels: ``rehost`` (mode from ``/rehost-mode``), ``rehost-stay``/``-poweroff``.

    Nobody types at the boot prompt in a test, so the default label decides; callers that
    want the kernel command line to force a mode rewrite this file with another default.
    """
    base = f"console=ttyS0,115200 panic=1 rehost.root={root_device}"
    labels = [("rehost", base), ("rehost-stay", f"{base} rehost.stay=1"),
              ("rehost-poweroff", f"{base} rehost.stay=0")]  # fmt: skip
    return extlinux_config(
        [(label, "/boot/vmlinuz", "/boot/initrd.img", append) for label, append in labels],
        default=default_label,
        comment="rehost tiny Linux",
    )


def extlinux_config(
    entries: Sequence[tuple[str, str, str, str]], *, default: str, comment: str
) -> str:
    """An ``extlinux.conf`` on the serial console, no prompt: ``entries`` are
    ``(label, kernel, initrd, append)``; ``default`` is the label that boots."""
    out = [f"# {comment}", "SERIAL 0 115200", "PROMPT 0", "TIMEOUT 0", f"DEFAULT {default}"]
    for label, kernel, initrd, append in entries:
        out += [f"LABEL {label}", f"  LINUX {kernel}", f"  INITRD {initrd}", f"  APPEND {append}"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# loop devices and mounts (always cleaned up)


















# --------------------------------------------------------------------------------------------
# public API


def build_tiny_linux(
    dest: Path,
    *,
    size_mib: int = 64,
    marker: str = "initial",
    mode: Mode = "poweroff",
    payload_mib: int = 1,
    kernel_version: str | None = None,
    extra_modules: Sequence[str] = (),
    guest_agent: bool = True,
    firmware: Literal["bios", "uefi"] = "bios",
    efi_loader: str = "/EFI/BOOT/BOOTX64.EFI",
) -> Path:
    """Build the bootable raw image at ``dest`` (overwritten) and return ``dest``.

    ``mode`` is written to ``/rehost-mode``: ``poweroff`` (default; print the marker, power
    off) or ``stay`` (print the marker, keep running with the root mounted read-write).
    ``payload_mib`` of seeded pseudo-random data are checksummed at every boot.
    ``extra_modules`` are kernel modules to add (e.g. ``virtio_net``, ``virtio_console``).
    ``guest_agent`` adds Debian's ``qemu-ga`` (+ its libraries, ~2.5 MB in the gzip'ed
    initramfs) and ``virtio_console``; in stay mode it runs on the virtio-serial port
    ``org.qemu.guest_agent.0`` when the VM has one (``QemuVM(guest_agent=True)``).
    Every image also carries ``/bin/rehost-churn MBPS SECONDS [FILE_MIB [FILE]]``.
    ``firmware="uefi"``: GPT + an EFI system partition instead of an MBR (see the module
    docstring); it needs ``size_mib`` >= 96. ``efi_loader``: where GRUB goes on the ESP; a
    distribution's own folder (``/EFI/debian/grubx64.efi``) without the fallback path is what
    Debian's grub-install leaves, and what a new VM's firmware does not find.
    """
    require_root()
    _check_marker(marker)
    if firmware not in ("bios", "uefi"):
        raise TinyLinuxError(f"firmware must be 'bios' or 'uefi', not {firmware!r}")
    if mode not in ("poweroff", "stay"):
        raise TinyLinuxError(f"mode must be 'poweroff' or 'stay', not {mode!r}")
    dest = Path(dest)
    kernel = find_kernel(kernel_version)
    initrd = build_initramfs(kernel, extra_modules=extra_modules, guest_agent=guest_agent)
    mbr_bin = first_existing(MBR_CANDIDATES, "syslinux mbr.bin (install syslinux-common)")
    payload = random.Random(0x7E4057).randbytes(payload_mib * _MIB)

    needed = kernel.image.stat().st_size + len(initrd) + len(payload) + 8 * _MIB
    needed += ESP_MIB * _MIB if firmware == "uefi" else 0
    if size_mib * _MIB < needed + _PART_START:
        raise TinyLinuxError(f"{size_mib} MiB is too small: need about {needed // _MIB + 2} MiB")

    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if firmware == "uefi":
            create_gpt_disk(tmp, size_mib, ESP_MIB)
            start, length = partition_extent(tmp, 1)  # no partition nodes: a loop device per partition
            device = loop_device(tmp, "--offset", str(start), "--sizelimit", str(length))
        else:
            create_msdos_disk(tmp, size_mib)
            device = loop_device(tmp, "--partscan")
        with device as loopdev:
            part = loopdev if firmware == "uefi" else wait_partition(loopdev)
            format_extlinux_ext4(part, label="rehost-root", inodes=2048)
            with mounted_device(part) as root:
                boot = root / "boot"
                (boot / "extlinux").mkdir(parents=True)
                shutil.copyfile(kernel.image, boot / "vmlinuz")
                (boot / "initrd.img").write_bytes(initrd)
                (boot / "extlinux" / "extlinux.conf").write_text(extlinux_conf())
                (root / PAYLOAD_PATH).write_bytes(payload)
                digest = hashlib.sha256(payload).hexdigest()
                (root / SUMS_PATH).write_text(f"{digest}  {PAYLOAD_PATH}\n")
                (root / MARKER_PATH).write_text(marker + "\n")
                (root / MODE_PATH).write_text(mode + "\n")
                if firmware == "bios":
                    run_tool(["extlinux", "--install", boot / "extlinux"])
        if firmware == "uefi":
            _write_esp(tmp, efi_loader)
        else:
            write_syslinux_mbr(tmp, mbr_bin)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


ESP_MIB = 32
#: what the standalone GRUB of a UEFI image runs: the root found by its label, the tiny
#: Linux's default entry on the serial console (what extlinux_conf's default says)
UEFI_GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
search --no-floppy --label rehost-root --set=root
echo "REHOST-UEFI grub"
linux /boot/vmlinuz console=ttyS0,115200 panic=1 rehost.root=/dev/vda1
initrd /boot/initrd.img
boot
"""


def _write_esp(image: Path, loader: str) -> None:
    """Format partition 2 as FAT and put a standalone GRUB at ``loader`` (an absolute path)."""
    parts = [p for p in loader.split("/") if p]
    if len(parts) < 2 or not loader.upper().endswith(".EFI") or any(not re.fullmatch(r"[A-Za-z0-9_.-]+", p)
                                                                    for p in parts):
        raise TinyLinuxError(f"efi_loader must be an absolute .efi path on the ESP, not {loader!r}")
    start, size = partition_extent(image, 2)
    work = Path(tempfile.mkdtemp(prefix="rehost-esp-"))
    try:
        cfg = work / "grub.cfg"
        cfg.write_text(UEFI_GRUB_CFG)
        efi = work / "BOOTX64.EFI"
        run_tool(["grub-mkstandalone", "-O", "x86_64-efi", "-o", efi, "--locales=", "--themes=", "--fonts=",
                  "--install-modules=linux normal search search_label part_gpt part_msdos ext2 fat serial "
                  "terminal echo test configfile",
                  "--modules=part_gpt part_msdos ext2 search_label serial terminal",
                  f"boot/grub/grub.cfg={cfg}"])
        with loop_device(image, "--offset", str(start), "--sizelimit", str(size)) as dev:
            run_tool(["mkfs.vfat", "-n", "EFI", dev])
            env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
            folders = ["::/" + "/".join(parts[:i]) for i in range(1, len(parts))]
            for cmd in (["mmd", "-i", dev, *folders], ["mcopy", "-i", dev, str(efi), "::" + loader]):
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    raise TinyLinuxError(f"{' '.join(cmd[:1])} failed: {r.stderr.strip()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ensure_not_in_use(image: Path) -> None:
    """Fail if a QEMU process (VM, qemu-nbd, ...) holds the image open against writers.

    Loop devices ignore QEMU's image locks, so without this check a test could write into
    the file system of a running guest and corrupt it. ``qemu-io`` opening the image
    read-write (and doing nothing) asks for exactly the lock a writer needs;
    ``qemu-img info`` is no use here, it only wants a shared read lock.
    """
    if shutil.which("qemu-io") is None or not Path(image).exists():
        return
    r = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "quit", str(image)], capture_output=True, check=False
    )
    if r.returncode != 0 and b"lock" in r.stderr:
        raise TinyLinuxError(
            f"{image} is in use by a QEMU process (VM or qemu-nbd): stop it first"
        )


def write_files(image: Path, files: Mapping[str, bytes | str]) -> None:
    """Write files (paths relative to the ext4 root) into a raw image, then sync and unmount.

    Tests use it to change the disk between replication cycles. Refuses an image that a
    running QEMU has open for writing (two writers would corrupt the file system).
    """
    _ensure_not_in_use(image)
    with mounted_root(image) as root:
        for rel, data in files.items():
            target = root / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)


def read_file(image: Path, path: str) -> bytes:
    """Read one file from the image's ext4 root, without modifying the image."""
    with mounted_root(image, readonly=True) as root:
        target = root / path.lstrip("/")
        if not target.exists():
            raise TinyLinuxError(f"{path} does not exist in {image}")
        return target.read_bytes()


def set_marker(image: Path, marker: str) -> None:
    """Rewrite ``/rehost-marker`` inside a raw image: the next boot prints the new marker."""
    _check_marker(marker)
    write_files(image, {MARKER_PATH: marker + "\n"})


def read_marker(image: Path) -> str:
    """The marker the image would print at boot (read offline, image untouched)."""
    return read_file(image, MARKER_PATH).decode().strip()


def set_mode(image: Path, mode: Mode) -> None:
    """Choose whether the image powers off after the marker or stays up (``/rehost-mode``)."""
    if mode not in ("poweroff", "stay"):
        raise TinyLinuxError(f"mode must be 'poweroff' or 'stay', not {mode!r}")
    write_files(image, {MODE_PATH: mode + "\n"})


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``build-tiny-linux OUT.img [--size-mib 64] [--marker-file-content TEXT]``."""
    p = argparse.ArgumentParser(prog="build-tiny-linux", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="raw image to write (overwritten)")
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--marker-file-content", default="initial", metavar="TEXT",
                   help="content of /rehost-marker, printed at boot")  # fmt: skip
    p.add_argument("--mode", choices=("poweroff", "stay"), default="poweroff")
    p.add_argument("--payload-mib", type=int, default=1)
    p.add_argument("--kernel-version", default=None)
    p.add_argument("--extra-module", action="append", default=[], metavar="NAME")
    p.add_argument("--no-guest-agent", dest="guest_agent", action="store_false",
                   help="leave qemu-ga out of the image")  # fmt: skip
    a = p.parse_args(argv)
    started = time.monotonic()
    try:
        out = build_tiny_linux(
            a.out, size_mib=a.size_mib, marker=a.marker_file_content, mode=a.mode,
            payload_mib=a.payload_mib, kernel_version=a.kernel_version,
            extra_modules=a.extra_module, guest_agent=a.guest_agent,
        )  # fmt: skip
    except RehostError as exc:
        print(f"build-tiny-linux: {exc}", file=sys.stderr)
        return 1
    print(f"{out} built in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
