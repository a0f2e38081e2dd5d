"""The guest's own configuration files, read as text: boot loader entries (extlinux, GRUB),
network interfaces (ifupdown, netplan, systemd-networkd, NetworkManager, ifcfg) and fstab.
Pure parsers, apart from the appliance that fetches the files (``rehost.guest.inspect``), so
each format is tested on its own text."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

DEVICE_NAME_RE = re.compile(r"^/dev/(?:[shvx]|xv)d([a-z]+)(\d*)$|^/dev/nvme(\d+)n\d+(?:p(\d+))?$")


_STABLE_PREFIXES = {"UUID=": "uuid", "LABEL=": "label", "PARTUUID=": "partuuid", "PARTLABEL=": "partlabel",
                    "/dev/disk/by-uuid/": "uuid", "/dev/disk/by-label/": "label",
                    "/dev/disk/by-partuuid/": "partuuid", "/dev/disk/by-partlabel/": "partlabel",
                    "/dev/disk/by-id/": "id", "/dev/disk/by-path/": "path", "/dev/mapper/": "mapper"}


@dataclass(frozen=True)
class BootEntry:
    label: str
    kernel: str
    initrd: str
    cmdline: str


@dataclass(frozen=True)
class Bootloader:
    #: extlinux, grub or unknown
    kind: str
    config: str = ""
    entries: tuple[BootEntry, ...] = ()
    default: str = ""
    #: GRUB_CMDLINE_LINUX(+_DEFAULT) of /etc/default/grub, what the next grub-mkconfig writes
    default_grub_cmdline: str | None = None

    def default_entry(self) -> BootEntry | None:
        for e in self.entries:
            if e.label == self.default:
                return e
        return self.entries[0] if self.entries else None


@dataclass(frozen=True)
class Interface:
    name: str
    #: dhcp, static, manual or unknown
    method: str
    addresses: tuple[str, ...] = ()
    gateway: str = ""
    #: the file that says so, and its kind (ifupdown, netplan, networkd, networkmanager, ifcfg)
    source: str = ""
    tool: str = ""


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str
    options: str
    #: uuid, label, partuuid, partlabel, id, path, mapper, device (a name that changes
    #: with the bus: /dev/sda1, /dev/vda1), file (a swap file), other (LVM, network, tmpfs)
    by: str


def split_cmdline(cmdline: str) -> list[str]:
    try:
        return shlex.split(cmdline)
    except ValueError:
        return cmdline.split()


def parse_extlinux(text: str, path: str = "") -> Bootloader:
    entries: list[BootEntry] = []
    default = ""
    cur: dict[str, str] | None = None

    def close() -> None:
        if cur is not None:
            append = cur.get("append", "")
            initrd = cur.get("initrd", "")
            if not initrd:
                for a in split_cmdline(append):
                    if a.startswith("initrd="):
                        initrd = a.split("=", 1)[1].split(",")[0]
            cmd = " ".join(a for a in split_cmdline(append) if not a.startswith("initrd="))
            entries.append(BootEntry(cur["label"], cur.get("kernel", ""), initrd, cmd))

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.lower(), value.strip()
        if key == "default":
            default = value
        elif key == "label":
            close()
            cur = {"label": value}
        elif cur is not None and key in ("kernel", "linux"):
            cur["kernel"] = value
        elif cur is not None and key == "initrd":
            cur["initrd"] = value
        elif cur is not None and key == "append":
            cur["append"] = value
    close()
    return Bootloader("extlinux", path, tuple(entries), default)


_MENUENTRY_RE = re.compile(r"""^\s*menuentry\s+(['"])(.*?)\1""")


def parse_grub_cfg(text: str, path: str = "") -> Bootloader:
    """The menu entries' ``linux``/``initrd`` lines; the default is entry 0 unless ``set
    default`` names a title (a saved default is not followed: reported as the first)."""
    entries: list[BootEntry] = []
    title = ""
    kernel = cmd = initrd = ""
    default = ""
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        m = _MENUENTRY_RE.match(line)
        if m and depth == 0:
            title, kernel, cmd, initrd = m.group(2), "", "", ""
        words = split_cmdline(line)
        if words[:1] == ["set"] and len(words) > 1 and words[1].startswith("default="):
            default = words[1].split("=", 1)[1].strip("\"'")
        if words and words[0] in ("linux", "linux16", "linuxefi") and len(words) > 1:
            kernel, cmd = words[1], " ".join(words[2:])
        if words and words[0] in ("initrd", "initrd16", "initrdefi") and len(words) > 1:
            initrd = words[-1]
        depth += line.count("{") - line.count("}")
        if title and kernel and depth == 0 and line.endswith("}"):
            entries.append(BootEntry(title, kernel, initrd, cmd))
            title = ""
    if default.isdigit() and int(default) < len(entries):
        default = entries[int(default)].label
    elif not any(e.label == default for e in entries):
        default = entries[0].label if entries else ""
    return Bootloader("grub", path, tuple(entries), default)


def parse_default_grub(text: str) -> str:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            if line.startswith(key + "="):
                values[key] = " ".join(split_cmdline(line.split("=", 1)[1]))
    both = (values.get("GRUB_CMDLINE_LINUX"), values.get("GRUB_CMDLINE_LINUX_DEFAULT"))
    return " ".join(v for v in both if v)


def parse_ifupdown(text: str, path: str = "") -> list[Interface]:
    out: list[Interface] = []
    cur: dict[str, Any] | None = None

    def close() -> None:
        if cur is not None:
            out.append(Interface(cur["name"], cur["method"], tuple(cur["addresses"]), cur["gateway"], path,
                                 "ifupdown"))

    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "iface" and len(words) >= 4:
            close()
            method = {"dhcp": "dhcp", "static": "static", "manual": "manual", "loopback": "loopback",
                      "auto": "dhcp"}.get(words[3], "unknown")
            if words[2] == "inet6":
                cur = None  # IPv6 stanzas do not decide how the machine gets its IPv4 address
                continue
            cur = {"name": words[1], "method": method, "addresses": [], "gateway": ""}
        elif words[0] in ("auto", "allow-hotplug", "source", "source-directory", "mapping"):
            close()
            cur = None
        elif cur is not None and words[0] == "address" and len(words) > 1:
            cur["addresses"].append(words[1])
        elif cur is not None and words[0] == "gateway" and len(words) > 1:
            cur["gateway"] = words[1]
    close()
    return out


def parse_netplan(text: str, path: str = "") -> list[Interface]:
    try:
        import yaml
    except ImportError as e:  # PyYAML comes with the server's dependencies; say so if not
        raise ValueError("not read: PyYAML is not installed") from e
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"not YAML: {e}") from e
    net = doc.get("network", {}) if isinstance(doc, dict) else {}
    out = []
    for group in ("ethernets", "bonds", "bridges", "vlans"):
        for name, conf in (net.get(group) or {}).items():
            conf = conf or {}
            dhcp = conf.get("dhcp4") in (True, "true", "yes")
            addrs = tuple(str(a) for a in conf.get("addresses") or () if ":" not in str(a))
            method = "dhcp" if dhcp else ("static" if addrs else "manual")
            out.append(Interface(str(name), method, addrs, str(conf.get("gateway4", "")), path, "netplan"))
    return out


def _ini(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line:
            k, v = line.split("=", 1)
            cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def parse_networkd(text: str, path: str = "") -> list[Interface]:
    s = _ini(text)
    names = " ".join(s.get("Match", {}).get("Name", [])).split() or ["unknown"]
    net = s.get("Network", {})
    dhcp = net.get("DHCP", ["no"])[-1].lower() in ("yes", "ipv4", "true", "both")
    addrs = tuple(a for a in net.get("Address", []) + s.get("Address", {}).get("Address", []) if ":" not in a)
    method = "dhcp" if dhcp else ("static" if addrs else "manual")
    gw = (net.get("Gateway") or [""])[0]
    return [Interface(n, method, addrs, gw, path, "networkd") for n in names]


def parse_nmconnection(text: str, path: str = "") -> list[Interface]:
    s = _ini(text)
    conn = s.get("connection", {})
    if conn.get("type", [""])[0] not in ("ethernet", "802-3-ethernet", "bond", "bridge", "vlan", ""):
        return []
    name = conn.get("interface-name", [""])[0] or conn.get("id", ["unknown"])[0]
    ipv4 = s.get("ipv4", {})
    m = ipv4.get("method", ["auto"])[0]
    method = {"auto": "dhcp", "manual": "static", "disabled": "manual", "link-local": "manual"}.get(
        m, "unknown")
    values = [v for k, vs in ipv4.items() if re.fullmatch(r"address\d*|addresses", k) for v in vs]
    addrs = tuple(v.split(",")[0] for v in values)
    gws = [v.split(",")[1] for v in values if "," in v]
    gw = ipv4.get("gateway", [""])[0] or (gws[0] if gws else "")
    return [Interface(name, method, addrs, gw, path, "networkmanager")]


def parse_ifcfg(text: str, path: str = "") -> list[Interface]:
    v: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, val = line.split("=", 1)
            v[k.strip()] = val.strip().strip("\"'")
    name = v.get("DEVICE") or path.rsplit("ifcfg-", 1)[-1]
    proto = v.get("BOOTPROTO", "none").lower()
    addr = v.get("IPADDR", "")
    prefix = v.get("PREFIX", "")
    method = "dhcp" if proto in ("dhcp", "bootp") else ("static" if addr else "manual")
    addrs = (f"{addr}/{prefix}" if prefix else addr,) if addr else ()
    return [Interface(name, method, addrs, v.get("GATEWAY", ""), path, "ifcfg")]


def classify_spec(spec: str) -> str:
    for prefix, kind in _STABLE_PREFIXES.items():
        if spec.startswith(prefix):
            return kind
    if DEVICE_NAME_RE.match(spec):
        return "device"
    if spec.startswith("/") and not spec.startswith("/dev/"):
        return "file"
    return "other"


def parse_fstab(text: str) -> tuple[FstabEntry, ...]:
    out = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        out.append(FstabEntry(words[0], words[1], words[2], words[3] if len(words) > 3 else "defaults",
                              classify_spec(words[0])))
    return tuple(out)
