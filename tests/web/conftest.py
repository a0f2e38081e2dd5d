"""A real browser (Debian's chromium, driven by Playwright) against a live portal.

Browsers cannot be downloaded here, so Playwright launches /usr/bin/chromium. Screenshots
are written under the test's tmp dir and copied to build/web-artifacts/<test>/ (ignored
by git); the run's summary prints where they are.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import REPO

CHROMIUM = os.environ.get("REHOST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("REHOST_WEB_ARTIFACTS", REPO / "build" / "web-artifacts"))
_saved: list[Path] = []


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/install installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Shots:
    """Numbered screenshots of one test, kept as artifacts."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.dir = tmp / "screens"
        self.dir.mkdir()
        self.keep = ARTIFACTS / name
        self.n = 0

    def take(self, page: object, what: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{what}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path

    def publish(self) -> None:
        shutil.rmtree(self.keep, ignore_errors=True)
        shutil.copytree(self.dir, self.keep)
        _saved.append(self.keep)
        print(f"\nscreenshots: {self.keep}")


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Shots]:
    s = Shots(tmp_path, request.node.name.replace("/", "_"))
    try:
        yield s
    finally:
        if s.n:
            s.publish()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _saved:
        terminalreporter.write_sep("-", "dashboard screenshots")
        for d in _saved:
            terminalreporter.write_line(f"{d} ({len(list(d.glob('*.png')))} png)")
