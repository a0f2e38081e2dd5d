"""A vault with one machine, its recovery points and a target, built in-process: what the
target conformance suite and the fast failover-plan tests start from.

The fast tests use a small synthetic disk instead of the tiny Linux: an MBR boot signature
(what the memory target's emulated boot checks), the line the test expects the boot to
"print", and some pseudo-random data that must arrive byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rehost.targets.base import Target
from rehost.vault import inventory, protection, targets
from rehost.vault.vault import Vault

MiB = 1 << 20
DISK_SIZE = 4 * MiB


def make_disk(path: Path, marker: str, *, bootable: bool = True, size: int = DISK_SIZE) -> Path:
    """A raw disk: a boot signature, ``REHOST-BOOT-OK marker=...`` at 1 MiB, random data at
    2 MiB (seeded by the marker, so each marker gives other bytes), zeros elsewhere."""
    rnd = random.Random(marker)
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(bytes(rnd.getrandbits(8) for _ in range(446)))  # boot code: anything
        f.seek(510)
        f.write(b"\x55\xaa" if bootable else b"\0\0")
        f.seek(MiB)
        f.write(f"REHOST-BOOT-OK marker={marker}\n".ljust(64, "\0").encode())
        f.seek(2 * MiB)
        f.write(rnd.randbytes(300_000))
    return path


@dataclass
class World:
    """A vault, the machine ``web`` made of ``image``, and the target ``t``."""

    vault: Vault
    image: Path
    target_path: Path
    points: list[str] = field(default_factory=list)  # oldest first
    machine: str = "web"

    def target(self) -> Target:
        return targets.provider(targets.get_target(self.vault, "t"))

    def replicate(self, marker: str | None = None, *, image: Path | None = None) -> str:
        """Change the source (if a marker is given) and replicate one point."""
        if marker is not None:
            make_disk(image or self.image, marker)
        point = protection.replicate(self.vault, self.machine).point.id
        self.points.append(point)
        return point


@contextmanager
def world(tmp_path: Path, kind: str, image: Path | None = None,
          markers: tuple[str, ...] = ("first", "second"), **target_options: object) -> Iterator[World]:
    """A vault with machine ``web`` and target ``t`` of ``kind``. Without ``image``, the machine
    is a synthetic disk replicated once per marker; with one, it is replicated once as it is."""
    vault = Vault.init(tmp_path / "vault")
    try:
        synthetic = image is None
        image = make_disk(tmp_path / "web.img", markers[0]) if image is None else image
        inventory.add_image_source(vault, "web", [image])
        from rehost import plugin_config
        from rehost.targets import registry

        folder = {"path": tmp_path / "target"} if "path" in {
            o["name"] for o in plugin_config.describe(registry.get(kind).config)} else {}
        targets.add_target(vault, kind, "t", {**folder, **target_options})
        w = World(vault, image, tmp_path / "target")
        for marker in markers if synthetic else ("as-is",):
            w.replicate(marker if synthetic else None)
        yield w
    finally:
        vault.close()
