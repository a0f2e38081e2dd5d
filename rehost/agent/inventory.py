"""What the agent reports about its machine: disks, partition tables, OS, NICs."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

from rehost.agent.tracker import device_size

SECTOR = 512


def partition_table(path: Path) -> dict[str, Any]:
    """The partition table from the first sectors: ``gpt``, ``msdos`` or ``none``."""
    with open(path, "rb") as f:
        head = f.read(SECTOR * 2)
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return {"type": "none", "partitions": []}
    if head[SECTOR : SECTOR + 8] == b"EFI PART":
        return _gpt(path, head[SECTOR : 2 * SECTOR])
    parts = []
    for i in range(4):
        entry = head[446 + 16 * i : 446 + 16 * (i + 1)]
        kind = entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        if kind and count:
            parts.append(
                {
                    "number": i + 1,
                    "type": f"0x{kind:02x}",
                    "start": start * SECTOR,
                    "size": count * SECTOR,
                    "bootable": entry[0] == 0x80,
                }
            )
    if any(p["type"] == "0xee" for p in parts):
        return {"type": "gpt", "partitions": [], "note": "protective MBR without a GPT header"}
    return {"type": "msdos", "partitions": parts}


def _gpt(path: Path, header: bytes) -> dict[str, Any]:
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    disk_guid = header[56:72]
    parts = []
    count = min(count, 256)
    with open(path, "rb") as f:
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    for i in range(count):
        e = table[i * entry_size : (i + 1) * entry_size]
        if len(e) < 128 or e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", errors="replace").rstrip("\x00")
        parts.append(
            {
                "number": i + 1,
                "type": _guid(e[:16]),
                "start": first * SECTOR,
                "size": (last - first + 1) * SECTOR,
                "name": name,
            }
        )
    return {"type": "gpt", "guid": _guid(disk_guid), "partitions": parts}


def _guid(b: bytes) -> str:
    a, b1, c = struct.unpack_from("<IHH", b)
    rest = b[8:16].hex()
    return f"{a:08x}-{b1:04x}-{c:04x}-{rest[:4]}-{rest[4:]}"


def os_release(root: Path = Path("/")) -> dict[str, str]:
    out: dict[str, str] = {"kernel": platform.release(), "arch": platform.machine()}
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("ID", "VERSION_ID", "PRETTY_NAME", "NAME", "VERSION_CODENAME"):
                out[key.lower()] = value.strip().strip('"')
        break
    return out


def nics(sysfs: Path = Path("/sys/class/net")) -> list[dict[str, Any]]:
    addresses: dict[str, list[str]] = {}
    with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
        raw = subprocess.run(["ip", "-j", "addr"], capture_output=True, timeout=10, check=True).stdout
        for link in json.loads(raw):
            addresses[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
    out = []
    for d in sorted(sysfs.iterdir()) if sysfs.is_dir() else []:

        def read(name: str, d: Path = d) -> str:
            try:
                return (d / name).read_text().strip()
            except OSError:
                return ""

        out.append(
            {
                "name": d.name,
                "mac": read("address"),
                "mtu": int(read("mtu") or 0),
                "state": read("operstate"),
                "addresses": addresses.get(d.name, []),
            }
        )
    return out


def disk_info(index: int, path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"index": index, "path": str(path)}
    try:
        info["size"] = device_size(path)
        info["partition_table"] = partition_table(path)
        info["block_device"] = path.is_block_device()
    except OSError as e:
        info["error"] = f"{e.strerror or e}"
    return info


def capabilities(dev: Path = Path("/dev")) -> dict[str, Any]:
    """What the agent can do for consistency here; the server records points accordingly.

    Block-level snapshots need LVM / device-mapper (``/dev/mapper/control`` and ``lvcreate``);
    without them points are read from the live disk. Freezing needs ``fsfreeze``.
    """
    snapshot = (dev / "mapper" / "control").exists() and shutil.which("lvcreate") is not None
    return {
        "fsfreeze": shutil.which("fsfreeze") is not None,
        "block_snapshot": False,
        "block_snapshot_why": (
            "device-mapper and LVM are present, but this agent does not take LVM snapshots yet"
            if snapshot
            else "no device-mapper / LVM on this machine"
        ),
    }


def collect(disks: list[Path]) -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "os": os_release(),
        "cpus": os.cpu_count() or 0,
        "memory": _memory(),
        "disks": [disk_info(i, p) for i, p in enumerate(disks)],
        "nics": nics(),
        "capabilities": capabilities(),
    }


def _memory() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0
