"""Edits of a guest's configuration files, as pure text functions (the fix-ups' words).

Why pure: a fix-up changes the copy of a machine on the target, and what it writes must be
checkable without an appliance. Each function takes a file's text and returns the new text,
leaving every line it has no business with as it was (comments, other interfaces, options);
the readers in :mod:`rehost.guest.config_files` read the result back the same way the
inspection reads the source. Netplan is the exception: its YAML is loaded and dumped, so its
comments do not survive (said in the fix-up's note).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: ifupdown options that only mean something for a static address
_IFUPDOWN_STATIC = frozenset({"address", "netmask", "gateway", "broadcast", "network", "pointopoint",
                              "hwaddress-static", "scope"})


def ifupdown_dhcp(text: str, iface: str) -> str:
    """``iface IFACE inet static`` (and its address options) becomes ``inet dhcp``."""
    out: list[str] = []
    inside = False
    for raw in text.splitlines(keepends=True):
        words = raw.split("#", 1)[0].split()
        if words and words[0] in ("iface", "auto", "allow-hotplug", "source", "source-directory", "mapping"):
            inside = False
        if words[:1] == ["iface"] and len(words) >= 4 and words[1] == iface and words[2] == "inet":
            inside = True
            indent = raw[: len(raw) - len(raw.lstrip())]
            rest = " ".join(words[4:])
            out.append(f"{indent}iface {iface} inet dhcp{(' ' + rest) if rest else ''}\n")
            continue
        if inside and words and words[0] in _IFUPDOWN_STATIC:
            continue
        out.append(raw)
    return "".join(out)


def netplan_dhcp(text: str, iface: str) -> str:
    import yaml  # a server dependency; the inspection read this file with it

    doc = yaml.safe_load(text) or {}
    for group in ("ethernets", "bonds", "bridges", "vlans"):
        conf = ((doc.get("network") or {}).get(group) or {}).get(iface)
        if conf is not None:
            for key in ("addresses", "gateway4", "routes", "dhcp4"):
                conf.pop(key, None)
            conf["dhcp4"] = True
    return str(yaml.safe_dump(doc, default_flow_style=False, sort_keys=False))


def _ini_dhcp(text: str, section: str, drop: Callable[[str], bool], set_key: str, value: str) -> str:
    """In ``[section]``: drop keys for which ``drop`` holds, set ``set_key=value`` once."""
    out: list[str] = []
    cur = ""
    done = False
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            if cur == section and not done:
                out.append(f"{set_key}={value}\n")
                done = True
            cur = line[1:-1].strip()
        elif cur == section and "=" in line and not line.startswith(("#", ";")):
            key = line.split("=", 1)[0].strip()
            if key == set_key:
                if not done:
                    out.append(f"{set_key}={value}\n")
                    done = True
                continue
            if drop(key):
                continue
        out.append(raw)
    if not done:
        if cur != section:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            out.append(f"[{section}]\n")
        elif out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(f"{set_key}={value}\n")
    return "".join(out)


def networkd_dhcp(text: str, iface: str = "") -> str:
    return _ini_dhcp(text, "Network", lambda k: k in ("Address", "Gateway"), "DHCP", "ipv4")


def nmconnection_dhcp(text: str, iface: str = "") -> str:
    return _ini_dhcp(text, "ipv4", lambda k: bool(re.fullmatch(r"address\d*|addresses|gateway", k)),
                     "method", "auto")


def ifcfg_dhcp(text: str, iface: str = "") -> str:
    out: list[str] = []
    done = False
    for raw in text.splitlines(keepends=True):
        key = raw.split("=", 1)[0].strip() if "=" in raw and not raw.lstrip().startswith("#") else ""
        if re.fullmatch(r"(IPADDR|PREFIX|NETMASK|GATEWAY)\d*", key):
            continue
        if key == "BOOTPROTO":
            out.append("BOOTPROTO=dhcp\n")
            done = True
            continue
        out.append(raw)
    if not done:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append("BOOTPROTO=dhcp\n")
    return "".join(out)


#: the DHCP edit per network tool (``Interface.tool``)
TO_DHCP: dict[str, Callable[[str, str], str]] = {
    "ifupdown": ifupdown_dhcp, "netplan": netplan_dhcp, "networkd": networkd_dhcp,
    "networkmanager": nmconnection_dhcp, "ifcfg": ifcfg_dhcp,
}


def fstab_specs(text: str, names: Mapping[str, str]) -> str:
    """Replace the first field of entries whose spec is a key of ``names`` (``/dev/vda1`` ->
    ``UUID=...``); every other line is kept byte for byte."""
    out: list[str] = []
    for raw in text.splitlines(keepends=True):
        stripped = raw.lstrip()
        fields = stripped.split()
        if fields and not stripped.startswith("#") and fields[0] in names:
            lead = raw[: len(raw) - len(stripped)]
            raw = lead + names[fields[0]] + stripped[len(fields[0]):]
        out.append(raw)
    return "".join(out)


def root_args(text: str, names: Mapping[str, str]) -> str:
    """``root=/dev/vda1`` -> ``root=UUID=...`` wherever a kernel command line says it
    (extlinux APPEND, grub.cfg ``linux`` lines, GRUB_CMDLINE_LINUX)."""
    for device, stable in names.items():
        text = re.sub(rf"(?<![\w/-])root={re.escape(device)}(?=[\s\"']|$)", f"root={stable}", text,
                      flags=re.MULTILINE)
    return text


def _has_console(words: str, console: str) -> bool:
    return any(w.startswith("console=") and w.split("=", 1)[1].split(",")[0] == console.split(",")[0]
               for w in words.split())


def console_extlinux(text: str, console: str = "ttyS0,115200") -> str:
    """``console=`` added to every APPEND line (and an APPEND to entries with none)."""
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    for i, raw in enumerate(lines):
        words = raw.split()
        key = words[0].lower() if words else ""
        if key == "append" and not _has_console(raw, console):
            raw = raw.rstrip("\r\n") + f" console={console}\n"
        out.append(raw)
        if key in ("kernel", "linux"):
            # an entry without an APPEND line gets one (up to the next label)
            rest = []
            for nxt in lines[i + 1:]:
                w = nxt.split()
                if w and w[0].lower() == "label":
                    break
                rest.append(w[0].lower() if w else "")
            if "append" not in rest:
                indent = raw[: len(raw) - len(raw.lstrip())]
                out.append(f"{indent}APPEND console={console}\n")
    return "".join(out)


def console_grub_cfg(text: str, console: str = "ttyS0,115200") -> str:
    """``console=`` added to every ``linux``/``linuxefi``/``linux16`` line of a grub.cfg."""
    out: list[str] = []
    for raw in text.splitlines(keepends=True):
        words = raw.split()
        if words and words[0] in ("linux", "linuxefi", "linux16") and not _has_console(raw, console):
            raw = raw.rstrip("\r\n") + f" console={console}\n"
        out.append(raw)
    return "".join(out)


def console_default_grub(text: str, console: str = "ttyS0,115200") -> str:
    """``console=`` in GRUB_CMDLINE_LINUX (what the next update-grub writes), and the serial
    terminal next to grub's own console."""
    out: list[str] = []
    seen = False
    for raw in text.splitlines(keepends=True):
        m = re.match(r"^(\s*GRUB_CMDLINE_LINUX=)([\"']?)(.*?)\2\s*$", raw)
        if m:
            seen = True
            value = m.group(3)
            if not _has_console(value, console):
                value = (value + " " if value else "") + f"console={console}"
            raw = f'{m.group(1)}"{value}"\n'
        out.append(raw)
    if not seen:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(f'GRUB_CMDLINE_LINUX="console={console}"\n')
    return "".join(out)


def modules_file(text: str, modules: list[str]) -> str:
    """initramfs-tools' ``/etc/initramfs-tools/modules`` with ``modules`` listed (once)."""
    listed = {ln.split("#", 1)[0].strip().split(" ")[0] for ln in text.splitlines()}
    missing = [m for m in modules if m not in listed]
    if not missing:
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    added = "".join(f"{m}\n" for m in missing)
    return f"{text}{sep}# added by rehost (fix-up on the migrated copy)\n{added}"
