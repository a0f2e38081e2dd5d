#!/usr/bin/env python3
"""Benchmark (not a test): what an offline guest inspection costs (rehost readiness), and
what the fix-ups on a copy cost (rehost failover --fix-up).

Builds the test kit's tiny Linux and a synthetic Debian disk (rehost.testkit.guestdisk), then
times ``inspect_batch`` for 1 machine in one appliance launch and for N machines (alternating
the two kinds, each its own image file) in one launch. With ``--debian`` it does the same with
the real Debian 12 guest (rehost.testkit.debian; its debootstrapped root is cached under
build/debian-cache, ~2.5 min the first time) and times the fix-ups on a qcow2 overlay of the
unready variant (MODULES=dep, static address, fstab by device): all of them, then all but
the initramfs rebuild. libguestfs runs with the direct backend and force_tcg (as rehost does
here). Prints a markdown table.

    .venv/bin/python bench/inspect_cost.py [--batch 5] [--debian] [--workdir DIR]

Run as root (the tiny Linux image is built with loop devices).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rehost.guest.inspect import inspect_batch
from rehost.testkit.guestdisk import build_guest_disk
from rehost.testkit.tinylinux import build_tiny_linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--debian", action="store_true", help="also the real Debian 12 guest and the fix-ups")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rehost-bench-inspect-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_linux(work / "tiny.img")
    debian = build_guest_disk(work / "debian.img", files={"etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n"})
    rows = []
    for label, disks in (("tiny Linux, alone", [tiny]), ("synthetic Debian, alone", [debian])):
        t = time.monotonic()
        [r] = inspect_batch([[str(disks[0])]])
        rows.append((label, 1, time.monotonic() - t))
        assert r.os_type == "linux", r
    copies = []
    for i in range(args.batch):
        src = tiny if i % 2 == 0 else debian
        dst = work / f"m{i}.img"
        shutil.copyfile(src, dst)
        copies.append([str(dst)])
    t = time.monotonic()
    results = inspect_batch(copies)
    rows.append((f"{args.batch} machines in one launch", args.batch, time.monotonic() - t))
    assert all(r.os_type == "linux" and r.kernels for r in results)
    if args.debian:
        rows += _debian(work, args.batch)
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, libguestfs direct + force_tcg\n")
    print("| inspection | machines | total s | s per machine |")
    print("|---|---|---|---|")
    for label, n, s in rows:
        print(f"| {label} | {n} | {s:.1f} | {s / n:.1f} |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _debian(work: Path, batch: int) -> list[tuple[str, int, float]]:
    from rehost.guest.fixups import apply_fixups
    from rehost.testkit.debian import build_debian_guest, copy_image

    rows = []
    ready = build_debian_guest(work / "deb.img")
    unready = build_debian_guest(work / "unready.img", initramfs_modules="dep", network="static",
                                 fstab_by="device", static_address="192.168.50.7/24")
    t = time.monotonic()
    [r] = inspect_batch([[str(ready)]])
    rows.append(("Debian 12 guest, alone", 1, time.monotonic() - t))
    assert r.os_type == "linux" and r.kernels, r
    copies = [[str(copy_image(ready if i % 2 == 0 else unready, work / f"d{i}.img"))] for i in range(batch)]
    t = time.monotonic()
    results = inspect_batch(copies)
    rows.append((f"{batch} Debian 12 guests in one launch", batch, time.monotonic() - t))
    assert all(r.os_type == "linux" and r.kernels for r in results)
    for label, names in (("fix-ups: all (initramfs rebuilt with update-initramfs)",
                          ["initramfs", "dhcp", "fstab", "serial-console", "remove-agents"]),
                         ("fix-ups: dhcp, fstab, serial-console (no initramfs)",
                          ["dhcp", "fstab", "serial-console"])):
        overlay = work / "fix.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(unready), "-F", "raw",
                        str(overlay)], check=True)
        t = time.monotonic()
        done = apply_fixups([str(overlay)], "qcow2", "local", names)
        rows.append((label, 1, time.monotonic() - t))
        assert any(f.changed for f in done.fixups), done
    return rows


if __name__ == "__main__":
    main()
