"""The item page's charts: pure functions from numbers to SVG text (rehost/web/charts.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from rehost.replication.health import span
from rehost.vault.cycle_history import CycleRecord
from rehost.web import charts

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def _all(svg: str, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in _parse(svg).iter(NS + tag) if e.get("class") == cls]


def test_the_rpo_is_a_sawtooth_that_drops_when_a_cycle_ends() -> None:
    # cycles end at 100, 160, 220; each point was taken 10 s before its cycle ended
    points = [(100.0, 90.0), (160.0, 150.0), (220.0, 210.0)]
    assert charts.rpo_series(points, start=0.0, now=250.0) == [
        (100.0, 10.0),  # nothing known before the first point
        (160.0, 70.0), (160.0, 10.0),
        (220.0, 70.0), (220.0, 10.0),
        (250.0, 40.0),  # and it grows until now
    ]


def test_the_rpo_when_the_window_opens_comes_from_the_cycle_before() -> None:
    points = [(50.0, 40.0), (160.0, 150.0)]
    assert charts.rpo_series(points, start=100.0, now=200.0) == [
        (100.0, 60.0), (160.0, 120.0), (160.0, 10.0), (200.0, 50.0)]
    assert charts.rpo_series([(50.0, 40.0)], start=100.0, now=200.0) == [(100.0, 60.0), (200.0, 160.0)]
    assert charts.rpo_series([], start=100.0, now=200.0) == []


def test_a_line_chart_has_its_series_markers_and_threshold() -> None:
    svg = charts.line_chart([(0.0, 0.0), (50.0, 30.0), (100.0, 5.0)], start=0.0, end=100.0, title="RPO <x>",
                            fmt=span, markers=[(50.0, 30.0), (100.0, 5.0)], threshold=60.0, chart_id="c")
    root = _parse(svg)
    assert root.get("id") == "c" and root.get("aria-label") == "RPO <x>"  # escaped, and read back
    assert len(_all(svg, "polyline", "series")) == 1
    assert [float(e.get("data-v", "")) for e in _all(svg, "circle", "pt")] == [30.0, 5.0]
    (line,) = _all(svg, "line", "threshold")
    assert "threshold 60s" in svg
    # the threshold is the highest value: it sits above the series' peak (SVG y grows downwards)
    ys = [float(p.split(",")[1]) for p in _all(svg, "polyline", "series")[0].get("points", "").split()]
    assert float(line.get("y1", "")) < min(ys)
    assert all(charts.PAD_T <= y <= charts.HEIGHT - charts.PAD_B for y in ys)


def test_a_bar_chart_has_a_bar_per_cycle_and_a_tick_per_failure() -> None:
    bars = [(1000.0 + i, float(i * 100)) for i in range(25)] + [(2000.0, None)]
    svg = charts.bar_chart(bars, title="Bytes", fmt=str, chart_id="b")
    rects = _all(svg, "rect", "bar")
    assert len(rects) == 25 and len(_all(svg, "line", "failed")) == 1
    heights = [float(r.get("height", "")) for r in rects]
    assert heights == sorted(heights) and heights[-1] > 10 * heights[1]  # taller for more bytes
    xs = [float(r.get("x", "")) for r in rects]
    assert xs == sorted(xs) and xs[-1] + float(rects[-1].get("width", "")) <= charts.WIDTH


def test_empty_charts_say_so() -> None:
    assert "no cycles in this window" in charts.bar_chart([], title="t", fmt=str)
    assert "no cycles in this window" in charts.line_chart([], start=0, end=1, title="t", fmt=str)


def test_item_charts_from_a_cycle_history() -> None:
    def at(s: float) -> datetime:
        return datetime.fromtimestamp(s, UTC)

    def text(s: float) -> str:
        return at(s).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    now = 1_800_000_000.0
    cycles = [CycleRecord(at(now - 90_000), 3.0, 10, 5, "p0", text(now - 90_003))]  # before the window
    cycles += [CycleRecord(at(now - 3600 * (20 - i)), 2.0 + i, 4096 * i, 100, f"p{i + 1}",
                           text(now - 3600 * (20 - i) - 2)) for i in range(20)]
    cycles.append(CycleRecord(at(now - 60), 1.0, error="source down"))
    out = charts.item_charts(cycles, 300.0, now)
    assert len(_all(out["rpo"], "circle", "pt")) == 20
    assert len(_all(out["rpo"], "line", "threshold")) == 1
    assert len(_all(out["bytes"], "rect", "bar")) == 20 and len(_all(out["bytes"], "line", "failed")) == 1
    assert len(_all(out["duration"], "rect", "bar")) == 21  # a failed cycle took time too
    assert out["rpo"].startswith('<svg id="rpo-chart"')
    # the RPO opens the window where the cycle before left it
    series = _all(out["rpo"], "polyline", "series")[0].get("points", "").split()
    assert series[0].startswith(f"{charts.PAD_L:.1f},")
