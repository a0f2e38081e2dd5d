"""Build a real Debian 12 guest disk (debootstrap, systemd, ifupdown/DHCP) for tests.

Why: the tiny Linux (:mod:`rehost.testkit.tinylinux`) proves replicated data boots, but it
has no distribution inside — no initramfs-tools, no ``/etc/network/interfaces``, no fstab.
Guest readiness (issue 16) must be checked against a guest a real admin would have: this
module makes one, and lets a test choose what a readiness check looks at (how the root is
named in fstab, DHCP or a static address, which drivers the initramfs carries).

Recipe (``build_debian_guest``):
  * ``debootstrap --variant=minbase`` of bookworm with ``DEBIAN_PACKAGES`` (kernel, systemd,
    udev, ifupdown + isc-dhcp-client, initramfs-tools, kmod, iproute2). Then, in a chroot:
    drivers no server guest needs are pruned from ``/lib/modules`` (``PRUNED_MODULE_DIRS``:
    sound, GPU, media, wireless, InfiniBand, ...; storage, network, virtio, Hyper-V, Xen stay)
    and ``depmod`` rerun, docs/man/locales and apt's caches are removed, and the initramfs is
    rebuilt with ``MODULES=most`` and ``COMPRESS=gzip`` (readable by any ``lsinitramfs``).
    The result is cached as a tarball ``<cache>/<recipe-hash>.tar`` (default
    ``build/debian-cache/`` of the checkout, or ``$REHOST_DEBIAN_CACHE``): the slow part is
    done once per machine; the hash covers suite, mirror, packages and this recipe's version.
  * A variant (marker, network, fstab, initramfs mode) is made from the tarball: a sparse raw
    disk, msdos label, partition 1 (bootable) = ext4 that extlinux can boot (the traps are
    tinylinux's: 4 KiB blocks, no ``64bit``/``metadata_csum_seed``/``orphan_file``), the
    tarball unpacked into it, the files below written, the initramfs rebuilt with
    ``update-initramfs`` in a chroot only when ``initramfs_modules`` is not ``most``, then
    extlinux and syslinux's MBR.

The guest:
  * extlinux boots ``/boot/vmlinuz-VERSION`` with ``root=UUID=<fs uuid> ro console=ttyS0,115200
    net.ifnames=0`` (``root=/dev/vda1`` when ``fstab_by="device"``). ``net.ifnames=0`` keeps
    the NIC ``eth0`` whatever PCI slot a target gives it. systemd starts a serial getty on
    ttyS0 (root cannot log in: its password is locked; the console is for reading).
  * ``/etc/fstab``: ``UUID=<uuid> / ext4 errors=remount-ro 0 1`` or ``/dev/vda1 / ...``.
  * ``/etc/network/interfaces``: ``auto eth0`` + ``iface eth0 inet dhcp`` (dhclient), or
    ``inet static`` with ``static_address``/``static_gateway`` (defaults: QEMU user-net's
    10.0.2.15/24 via 10.0.2.2). ``auto`` makes ``networking.service`` wait for the address.
  * ``rehost-boot-report.service`` (``Type=simple``, wanted by multi-user.target) waits for
    ``systemctl is-system-running --wait`` — multi-user reached, boot finished — then prints
    on ``/dev/ttyS0``: ``REHOST-BOOT-OK marker=<marker>`` (the text of ``/rehost-marker``,
    the tiny Linux's file, so ``tinylinux.set_marker``/``read_marker`` work on this disk
    too), ``REHOST-SYSTEMD state=<running|degraded|...>`` and ``REHOST-NET ip=<addr>`` (the
    first global IPv4 address) or ``REHOST-NET none``.
  * ``/etc/initramfs-tools/conf.d/rehost``: ``MODULES=most`` (every storage/network driver
    family initramfs-tools knows: ~740 modules, among them virtio_blk/virtio_scsi/virtio_net,
    ata_piix/ahci, sd_mod, nvme, hv_vmbus/hv_storvsc/hv_netvsc, xen_blkfront, e1000) or
    ``MODULES=dep``. In ``dep`` mode mkinitramfs looks at the *build host* (in the chroot the
    root is an ext4 on a loop device), so what ends up depends on that host; on this
    project's CI host (a virtio VM) ``lsinitramfs`` shows only ext4, jbd2, mbcache, crc16,
    crc32c_generic/_intel, dm_mod, fan, psmouse and virtio, virtio_ring, virtio_pci(+legacy/
    modern_dev), virtio_mmio: **no disk driver at all** — no virtio_blk, ata_piix, sd_mod,
    hv_storvsc — so that guest boots nowhere (the initramfs gives up waiting for the root)
    until a fix-up adds one. ``initramfs_extra_modules`` go to
    ``/etc/initramfs-tools/modules`` (e.g. ``("virtio_blk",)``: a guest that boots on KVM's
    virtio but lacks Hyper-V's drivers). ``initramfs_kernel_modules`` shows what ended up.
  * A fixed random ``/etc/machine-id`` (no first-boot prompts), hostname ``rehost-debian``,
    no swap; root's password stays locked (debootstrap's ``*``).

Measured on the CI host (2 shared cores, TCG, 2026-12-05): cold cache 160 s (debootstrap
90 s, pruning + ``depmod`` + initramfs + tarball ~70 s; the tarball is 412 MB); a variant from
the cache 3 s (``dep`` or extra modules: 5 s, the initramfs is rebuilt); boot to
``REHOST-BOOT-OK`` 26-32 s under TCG with 512 MiB (``REHOST-NET`` follows at once); the disk
is 1 GiB virtual, 432 MB allocated (sparse: copy it with :func:`copy_image`). Building needs
root (chroot, loop, mount) and ``debootstrap`` (scripts/install).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from rehost.errors import RehostError
from rehost.testkit.diskimage import (
    create_msdos_disk,
    format_extlinux_ext4,
    loop_device,
    mounted_device,
    mounted_root,
    wait_partition,
    write_syslinux_mbr,
)
from rehost.testkit.tinylinux import MARKER_PATH, _check_marker, extlinux_config

InitramfsModules = Literal["most", "dep"]
NetworkMode = Literal["dhcp", "static"]
FstabBy = Literal["uuid", "device"]

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "ifupdown",
    "isc-dhcp-client",
    "initramfs-tools",
    "kmod",
    "iproute2",
)
#: Module trees (under ``/lib/modules/VERSION/kernel``) no server guest needs: pruned to keep
#: the disk small (~170 MB). Storage, network (wired), virtio, Hyper-V and Xen drivers stay.
PRUNED_MODULE_DIRS: tuple[str, ...] = (
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/infiniband",
    "drivers/iio",
    "drivers/comedi",
    "drivers/staging",
    "drivers/bluetooth",
    "drivers/isdn",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
)
#: Bump when the cached root's recipe changes (the tarball's name changes with it).
RECIPE_VERSION = 1

NIC = "eth0"
ROOT_DEVICE = "/dev/vda1"
HOSTNAME = "rehost-debian"
REPORT_UNIT = "rehost-boot-report.service"
SYSTEMD_STATE_PREFIX = "REHOST-SYSTEMD"
NET_PREFIX = "REHOST-NET"

_MIB = 1024 * 1024
_CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}

REPORT_SCRIPT = r"""#!/bin/sh
# rehost: report on the serial console once the boot finished (multi-user reached).
systemctl is-system-running --wait >/dev/null 2>&1
state="$(systemctl is-system-running 2>/dev/null)"
marker="$(cat /rehost-marker 2>/dev/null)"
ip="$(ip -4 -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')"
{
    echo "REHOST-BOOT-OK marker=${marker:-unknown}"
    echo "REHOST-SYSTEMD state=${state:-unknown}"
    if [ -n "$ip" ]; then echo "REHOST-NET ip=$ip"; else echo "REHOST-NET none"; fi
} > /dev/ttyS0
"""

REPORT_UNIT_TEXT = """[Unit]
Description=rehost: print the boot marker and the address on ttyS0 once the boot finished
After=network-online.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/rehost-boot-report

[Install]
WantedBy=multi-user.target
"""


class DebianGuestError(RehostError):
    """Building the Debian guest failed (debootstrap, chroot, loop/mount trouble)."""

    user_error = False


# --------------------------------------------------------------------------------------------
# helpers


def _run(cmd: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.run(args, capture_output=True, check=False, env=env, timeout=timeout)
    except FileNotFoundError as exc:
        raise DebianGuestError(f"{args[0]} not found: run scripts/install") from exc
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        raise DebianGuestError(f"{' '.join(args)} failed (exit {proc.returncode}): {out[-3000:]}")
    return proc.stdout.decode(errors="replace")


def in_chroot(root: Path, *cmd: str, timeout: float = 900) -> str:
    """Run ``cmd`` chrooted into ``root`` with a clean environment; returns stdout."""
    return _run(["chroot", root, *cmd], env=dict(_CHROOT_ENV), timeout=timeout)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(prefix):
            found.append(mnt)
    return found


def _umount_all_under(path: Path) -> None:
    """Unmount everything below ``path``, deepest first; lazily when busy."""
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        for attempt in range(5):
            if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[Path]:
    """/proc, /sys and /dev (a bind of the host's) mounted into ``root`` for in-guest tools
    (``update-initramfs``, ``depmod``); always unmounted again, deepest first."""
    root = Path(root)
    try:
        for fstype, src, rel, opts in (
            ("proc", "proc", "proc", []),
            ("sysfs", "sysfs", "sys", []),
            (None, "/dev", "dev", ["--bind"]),
        ):
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            args = ["mount", *opts] if fstype is None else ["mount", "-t", fstype]
            _run([*args, src, target])
        yield root
    finally:
        _umount_all_under(root)


def _safe_rmtree(path: Path) -> None:
    """Remove a build tree, never following a mount left inside it (e.g. a bind of /dev)."""
    if not path.exists():
        return
    _umount_all_under(path)
    if _mounts_under(path):
        raise DebianGuestError(f"mounts are left under {path}: not removing it")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def default_cache_dir() -> Path:
    """``$REHOST_DEBIAN_CACHE`` or ``build/debian-cache`` of this checkout."""
    env = os.environ.get("REHOST_DEBIAN_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "debian-cache"


def recipe_hash(mirror: str = DEFAULT_MIRROR) -> str:
    """What the cached root depends on: suite, mirror, packages, pruning, recipe version."""
    text = "\n".join([f"v{RECIPE_VERSION}", SUITE, mirror, ",".join(DEBIAN_PACKAGES),
                      ",".join(PRUNED_MODULE_DIRS)])  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise DebianGuestError("building the Debian guest needs root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "chroot", "losetup", "mount", "parted", "mkfs.ext4", "extlinux"):
        if shutil.which(tool) is None:
            raise DebianGuestError(f"{tool} not found: run scripts/install")


def missing_reason() -> str | None:
    """Why the Debian guest cannot be built here (for pytest skips), or None."""
    try:
        _require_tools()
    except DebianGuestError as exc:
        return str(exc)
    return None


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(versions) != 1:
        raise DebianGuestError(f"expected one kernel in {root}/boot, found {versions}")
    return versions[0]


def _write_initramfs_conf(root: Path, modules: InitramfsModules, extra: Sequence[str]) -> None:
    conf = root / "etc/initramfs-tools/conf.d/rehost"
    conf.write_text(f"# written by rehost.testkit.debian\nMODULES={modules}\nCOMPRESS=gzip\n")
    mods = root / "etc/initramfs-tools/modules"
    head = "# List of modules that you want to include in your initramfs (rehost.testkit.debian)\n"
    mods.write_text(head + "".join(f"{m}\n" for m in extra))


def _update_initramfs(root: Path) -> None:
    with chroot_mounts(root):
        in_chroot(root, "update-initramfs", "-u", "-k", "all")


# --------------------------------------------------------------------------------------------
# the cached root (debootstrap: the slow part)


def cached_root(cache: Path | None = None, *, mirror: str | None = None) -> Path:
    """The tarball of the debootstrapped, pruned root; built on first use (locked against
    concurrent builders), reused afterwards."""
    _require_tools()
    mirror = mirror or os.environ.get("REHOST_DEBIAN_MIRROR") or DEFAULT_MIRROR
    cache = Path(cache) if cache is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{recipe_hash(mirror)}.tar"
    if tarball.exists():
        return tarball
    with (cache / f"{tarball.stem}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():  # another builder finished while we waited
            return tarball
        for stale in cache.glob(f".build-{tarball.stem}-*"):  # a builder killed mid-way
            _safe_rmtree(stale)
        work = Path(tempfile.mkdtemp(prefix=f".build-{tarball.stem}-", dir=cache))
        try:
            root = work / "root"
            started = time.monotonic()
            try:
                _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                      SUITE, root, mirror], timeout=3600)  # fmt: skip
            except DebianGuestError as exc:
                log = root / "debootstrap/debootstrap.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise DebianGuestError(f"{exc}\n--- debootstrap.log ---\n{tail}") from exc
            _prepare_root(root)
            tmp_tar = work / "root.tar"
            _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root,
                  "-cf", tmp_tar, "."])  # fmt: skip
            tmp_tar.replace(tarball)
            print(f"debian root cached in {tarball} ({time.monotonic() - started:.0f}s)",
                  file=sys.stderr)  # fmt: skip
        finally:
            _safe_rmtree(work)
    return tarball


def _prepare_root(root: Path) -> None:
    """Prune, clean and rebuild the initramfs (MODULES=most, gzip) of a fresh debootstrap."""
    version = _kernel_version(root)
    kernel_dir = root / "usr/lib/modules" / version / "kernel"
    for rel in PRUNED_MODULE_DIRS:
        shutil.rmtree(kernel_dir / rel, ignore_errors=True)
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                "var/cache/apt/archives", "var/lib/apt/lists"):  # fmt: skip
        d = root / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
    for f in (root / "var/cache/apt").glob("*.bin"):
        f.unlink()
    _write_initramfs_conf(root, "most", ())
    with chroot_mounts(root):
        in_chroot(root, "depmod", "-a", version)
        in_chroot(root, "update-initramfs", "-u", "-k", version)


# --------------------------------------------------------------------------------------------
# variants


def _interfaces(network: NetworkMode, address: str, gateway: str) -> str:
    head = ("# written by rehost.testkit.debian\nsource /etc/network/interfaces.d/*\n\n"
            "auto lo\niface lo inet loopback\n\n")  # fmt: skip
    if network == "dhcp":
        return head + f"auto {NIC}\niface {NIC} inet dhcp\n"
    return head + (f"auto {NIC}\niface {NIC} inet static\n    address {address}\n"
                   f"    gateway {gateway}\n")  # fmt: skip


def _configure(
    root: Path, *, fs_uuid: str, marker: str, network: NetworkMode, address: str, gateway: str,
    fstab_by: FstabBy,
) -> None:
    spec = f"UUID={fs_uuid}" if fstab_by == "uuid" else ROOT_DEVICE
    (root / "etc/fstab").write_text(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"{spec} / ext4 errors=remount-ro 0 1\n"
    )
    (root / "etc/network/interfaces").write_text(_interfaces(network, address, gateway))
    # not the build host's resolver: dhclient writes its own; a static guest gets QEMU
    # user-net's DNS (10.0.2.3)
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n" if network == "static" else "")
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / MARKER_PATH).write_text(marker + "\n")
    script = root / "usr/local/sbin/rehost-boot-report"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(REPORT_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system" / REPORT_UNIT).write_text(REPORT_UNIT_TEXT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / REPORT_UNIT
    link.unlink(missing_ok=True)
    link.symlink_to(f"/etc/systemd/system/{REPORT_UNIT}")


def build_debian_guest(
    dest: Path,
    *,
    cache: Path | None = None,
    marker: str = "debian",
    initramfs_modules: InitramfsModules = "most",
    network: NetworkMode = "dhcp",
    fstab_by: FstabBy = "uuid",
    size_mib: int = 1024,
    static_address: str = "10.0.2.15/24",
    static_gateway: str = "10.0.2.2",
    initramfs_extra_modules: Sequence[str] = (),
    mirror: str | None = None,
) -> Path:
    """Build the Debian 12 guest's raw disk at ``dest`` (overwritten) and return ``dest``.

    The debootstrapped root comes from ``cache`` (see :func:`cached_root`; built there on
    first use, ~1.5-2.5 min); the rest takes seconds. See the module docstring for what the
    guest holds and prints.
    """
    _check_marker(marker)
    if initramfs_modules not in ("most", "dep"):
        raise DebianGuestError(f"initramfs_modules must be 'most' or 'dep', not {initramfs_modules!r}")
    if network not in ("dhcp", "static"):
        raise DebianGuestError(f"network must be 'dhcp' or 'static', not {network!r}")
    if fstab_by not in ("uuid", "device"):
        raise DebianGuestError(f"fstab_by must be 'uuid' or 'device', not {fstab_by!r}")
    for m in initramfs_extra_modules:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", m):
            raise DebianGuestError(f"bad module name {m!r}")
    tarball = cached_root(cache, mirror=mirror)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        create_msdos_disk(tmp, size_mib)
        with loop_device(tmp, "--partscan") as loopdev:
            part = wait_partition(loopdev)
            format_extlinux_ext4(part, label="rehost-debian")
            fs_uuid = _run(["blkid", "-s", "UUID", "-o", "value", part]).strip()
            with mounted_device(part) as root:
                try:
                    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root,
                          "-xpf", tarball])  # fmt: skip
                    version = _kernel_version(root)
                    _configure(root, fs_uuid=fs_uuid, marker=marker, network=network,
                               address=static_address, gateway=static_gateway,
                               fstab_by=fstab_by)  # fmt: skip
                    if initramfs_modules != "most" or initramfs_extra_modules:
                        _write_initramfs_conf(root, initramfs_modules, initramfs_extra_modules)
                        _update_initramfs(root)
                    root_arg = f"UUID={fs_uuid}" if fstab_by == "uuid" else ROOT_DEVICE
                    append = f"root={root_arg} ro console=ttyS0,115200 net.ifnames=0 panic=10"
                    ext = root / "boot/extlinux"
                    ext.mkdir(parents=True, exist_ok=True)
                    (ext / "extlinux.conf").write_text(extlinux_config(
                        [("debian", f"/boot/vmlinuz-{version}", f"/boot/initrd.img-{version}",
                          append)],
                        default="debian", comment="rehost Debian 12 guest"))  # fmt: skip
                    _run(["extlinux", "--install", ext])
                finally:
                    _umount_all_under(root)  # a failed chroot step must not keep the fs busy
        write_syslinux_mbr(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def copy_image(src: Path, dest: Path) -> Path:
    """Copy a raw image keeping it sparse (``shutil.copyfile`` would write every zero)."""
    _run(["cp", "--sparse=always", src, dest])
    return Path(dest)


def initramfs_listing(image: Path) -> list[str]:
    """The paths in the image's initramfs (``lsinitramfs`` of ``/boot/initrd.img-*``), read
    from a read-only mount: the image is not changed."""
    with mounted_root(image, readonly=True) as root:
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not initrds:
            raise DebianGuestError(f"{image} has no /boot/initrd.img-*")
        out = _run(["lsinitramfs", initrds[-1]])
    return out.splitlines()


def initramfs_kernel_modules(image: Path) -> set[str]:
    """Module names (``virtio_blk``, ``hv_storvsc``, ...) in the image's initramfs."""
    names = set()
    for path in initramfs_listing(image):
        m = re.search(r"/([^/]+)\.ko(\.(xz|zst|gz))?$", path)
        if m:
            names.add(m.group(1).replace("-", "_"))
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m rehost.testkit.debian OUT.img [--marker M] [--dep] [--static] ...``."""
    p = argparse.ArgumentParser(prog="build-debian-guest", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--marker", default="debian")
    p.add_argument("--initramfs-modules", choices=("most", "dep"), default="most")
    p.add_argument("--network", choices=("dhcp", "static"), default="dhcp")
    p.add_argument("--fstab-by", choices=("uuid", "device"), default="uuid")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--initramfs-extra-module", action="append", default=[], metavar="NAME")
    a = p.parse_args(argv)
    started = time.monotonic()
    try:
        out = build_debian_guest(
            a.out, cache=a.cache, marker=a.marker, initramfs_modules=a.initramfs_modules,
            network=a.network, fstab_by=a.fstab_by, size_mib=a.size_mib,
            initramfs_extra_modules=a.initramfs_extra_module,
        )  # fmt: skip
    except RehostError as exc:
        print(f"build-debian-guest: {exc}", file=sys.stderr)
        return 1
    print(f"{out} built in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
