"""The item page's charts as inline SVG, drawn on the server: no chart library, no CDN, so the
dashboard works offline. Pure functions from numbers to SVG text; ``item_charts`` turns a
machine's cycle history (``rehost.vault.cycle_history``) into the three charts of its page:
RPO over the last day against the policy's threshold, bytes changed per cycle, cycle duration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from rehost.replication.health import span
from rehost.units import human
from rehost.vault.cycle_history import CycleRecord

DAY_S = 24 * 3600.0
#: a chart's size in SVG units (it scales to its box's width: a full-width chart is drawn
#: ``WIDE``, so its text keeps the size of the half-width ones)
WIDTH, WIDE, HEIGHT = 640, 1280, 180
#: room for the axis labels: left, right, top, bottom
PAD_L, PAD_R, PAD_T, PAD_B = 64, 12, 22, 24


@dataclass(frozen=True)
class Frame:
    """The plot area: times ``start``..``end`` across, values 0..``top`` upwards."""

    start: float
    end: float
    top: float
    width: float = WIDTH

    def x(self, t: float) -> float:
        across = (min(max(t, self.start), self.end) - self.start) / max(self.end - self.start, 1e-9)
        return PAD_L + across * (self.width - PAD_L - PAD_R)

    def y(self, v: float) -> float:
        return HEIGHT - PAD_B - min(max(v, 0.0), self.top) / self.top * (HEIGHT - PAD_T - PAD_B)


def rpo_series(points: Sequence[tuple[float, float]], start: float, now: float) -> list[tuple[float, float]]:
    """The RPO (age of the newest point) over ``start``..``now`` as a sawtooth's corners.

    ``points``: per successful cycle, (when it ended, its point's time), as unix times, oldest
    first; one before ``start`` gives the RPO when the window opens. The age grows with time
    and drops when a cycle ends, to that cycle's own age."""
    out: list[tuple[float, float]] = []
    newest: float | None = None  # the time of the newest point available so far
    for ended, taken in sorted(points):
        if ended >= start and newest is not None:
            if not out:
                out.append((start, start - newest))  # where the window opens
            out.append((ended, ended - newest))  # just before the drop
        newest = taken if newest is None else max(newest, taken)
        if ended >= start:
            out.append((ended, ended - newest))
    if newest is not None:
        if not out:
            out.append((start, start - newest))
        out.append((now, now - newest))
    return out


def line_chart(series: Sequence[tuple[float, float]], *, start: float, end: float, title: str,
               fmt: Callable[[float], str], markers: Sequence[tuple[float, float]] = (),
               threshold: float | None = None, chart_id: str = "", width: int = WIDTH) -> str:
    """A line through ``series`` (time, value); a dot per ``markers`` entry; the threshold as
    a dashed line."""
    values = [v for _, v in series] + [v for _, v in markers] + ([threshold] if threshold else [])
    f = Frame(start, end, _top(values), width)
    parts = _frame(f, title, fmt, start, end)
    if threshold:
        y = f.y(threshold)
        parts.append(f'<line class="threshold" x1="{PAD_L}" y1="{y:.1f}" x2="{f.width - PAD_R}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="threshold-label" x="{f.width - PAD_R}" y="{y - 3:.1f}" text-anchor="end">'
                     f'threshold {escape(fmt(threshold))}</text>')
    if series:
        pts = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in series)
        parts.append(f'<polyline class="series" points="{pts}"/>')
    for t, v in markers:
        parts.append(f'<circle class="pt" cx="{f.x(t):.1f}" cy="{f.y(v):.1f}" r="2.5" data-v="{v:.3f}">'
                     f"<title>{escape(_clock(t))}: {escape(fmt(v))}</title></circle>")
    return _svg(chart_id, title, parts, empty=not series, width=width)


def bar_chart(bars: Sequence[tuple[float, float | None]], *, title: str, fmt: Callable[[float], str],
              chart_id: str = "") -> str:
    """A bar per cycle, oldest on the left: (when it ended, its value; None for a failed cycle,
    drawn as a red tick). The axis below names the first and the last cycle's time."""
    n = len(bars)
    f = Frame(0, max(n, 1), _top([v for _, v in bars if v is not None]))
    first, last = (bars[0][0], bars[-1][0]) if bars else (0.0, 0.0)
    parts = _frame(f, title, fmt, first, last, by_time=False)
    slot = (f.width - PAD_L - PAD_R) / max(n, 1)
    width = max(1.0, min(14.0, slot * 0.7))
    base = f.y(0)
    for i, (t, v) in enumerate(bars):
        x = f.x(i + 0.5)
        if v is None:
            parts.append(f'<line class="failed" x1="{x:.1f}" y1="{base:.1f}" x2="{x:.1f}" '
                         f'y2="{base - 8:.1f}"><title>{escape(_clock(t))}: cycle failed</title></line>')
            continue
        y = f.y(v)
        parts.append(f'<rect class="bar" x="{x - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
                     f'height="{max(base - y, 0.5):.1f}" data-v="{v:.3f}">'
                     f"<title>{escape(_clock(t))}: {escape(fmt(v))}</title></rect>")
    return _svg(chart_id, title, parts, empty=not bars)


def item_charts(cycles: Sequence[CycleRecord], rpo_threshold_s: float | None, now: float,
                window_s: float = DAY_S) -> dict[str, str]:
    """The three charts of an item page from its cycle history (oldest first; one before the
    window may lead, as ``cycle_history.history(..., with_previous=True)`` returns)."""
    start = now - window_s
    ok = [(c.time.timestamp(), _stamp(c.point_time)) for c in cycles if c.ok and c.point_time]
    inside = [c for c in cycles if c.time.timestamp() >= start]
    drops = [(e, e - p) for e, p in ok if e >= start]
    return {
        "rpo": line_chart(rpo_series(ok, start, now), start=start, end=now,
                          title="RPO (age of the newest point)", fmt=span,
                          markers=drops, threshold=rpo_threshold_s, chart_id="rpo-chart", width=WIDE),
        "bytes": bar_chart([(c.time.timestamp(), float(c.changed_bytes) if c.ok else None) for c in inside],
                           title="Bytes changed per cycle", fmt=lambda v: human(int(v)),
                           chart_id="bytes-chart"),
        "duration": bar_chart([(c.time.timestamp(), c.seconds) for c in inside], title="Cycle duration",
                              fmt=seconds_text, chart_id="duration-chart"),
    }


def seconds_text(seconds: float) -> str:
    """A duration for an axis: tenths under 10 s (most cycles take a few), else as health spans."""
    return f"{seconds:.1f}s" if seconds < 10 else span(seconds)


def _top(values: Sequence[float]) -> float:
    """The value axis' top: a little above the largest value (1 when all are zero)."""
    peak = max([v for v in values if v > 0], default=0.0)
    return peak * 1.1 if peak > 0 else 1.0


def _frame(f: Frame, title: str, fmt: Callable[[float], str], start: float, end: float, *,
           by_time: bool = True) -> list[str]:
    """The title, three value gridlines with labels, and three time labels below: hours before
    now (``by_time``), else the first and last cycle's clock time."""
    parts = [f'<text class="chart-title" x="{PAD_L}" y="14">{escape(title)}</text>']
    for frac in (0.0, 0.5, 1.0):
        v = f.top / 1.1 * frac if f.top != 1.0 else frac
        y = f.y(v)
        parts.append(f'<line class="gridline" x1="{PAD_L}" y1="{y:.1f}" x2="{f.width - PAD_R}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(fmt(v))}</text>")
    if by_time:
        whole = end - start
        labels = [(0.0, "start", _ago(whole)), (0.5, "middle", _ago(whole / 2)), (1.0, "end", "now")]
    elif end:
        labels = [(0.0, "start", _clock(start)), (1.0, "end", _clock(end))]
    else:
        labels = []
    for frac, anchor, label in labels:
        x = PAD_L + frac * (f.width - PAD_L - PAD_R)
        parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f"{escape(label)}</text>")
    return parts


def _ago(seconds: float) -> str:
    return f"-{span(seconds)}"


def _svg(chart_id: str, title: str, parts: list[str], *, empty: bool, width: int = WIDTH) -> str:
    if empty:
        parts.append(f'<text class="empty" x="{width / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle">'
                     "no cycles in this window</text>")
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return (f'<svg{ident} class="chart" viewBox="0 0 {width} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>")


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stamp(time_text: str | None) -> float:
    """A point's time (its manifest's ISO-8601 UTC text) as a unix time."""
    return datetime.fromisoformat(str(time_text).replace("Z", "+00:00")).timestamp()
