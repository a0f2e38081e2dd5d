"""Numbers as people read them, shared by every edge (CLI, API, dashboard).

A leaf module on purpose: the CLI and the dashboard both format byte counts, and neither edge
may import the other (see the layers in ``docs/design.md``).
"""

from __future__ import annotations


def human(n: float) -> str:
    """A byte count in binary units: ``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"
