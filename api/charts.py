"""Charts as server-rendered SVG: no JavaScript, no chart library, nothing fetched from a CDN.

The dashboard's CSP forbids scripts, and the control plane runs on air-gapped clusters, so a
chart is markup built here: an inline ``<svg>`` inside a ``<figure class="chart">`` whose
``data-chart`` names it and whose ``data-points`` counts what it plots (0 = an empty-state
message instead of axes). Colours and strokes come from classes (``s0`` … ``s7``) styled in
``static/dashboard.css``: no ``style`` attribute, so a strict ``style-src`` holds too. Each
point and bar carries a ``<title>``, which browsers show as a tooltip.

Every text that comes from a run (stage names, reasons, kinds) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 14, 12, 34
PALETTE_SIZE = 8  # classes s0..s7 in dashboard.css
MAX_DOTS = 60  # series with more points are drawn as lines only

Point = tuple[float, float | None]  # y None = a gap (the line breaks there)


@dataclass(frozen=True)
class Series:
    name: str
    points: list[Point]

    @property
    def plotted(self) -> list[tuple[float, float]]:
        return [(x, y) for x, y in self.points if y is not None and math.isfinite(y)]


@dataclass(frozen=True)
class LineChart:
    chart_id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    empty: str = "no data yet"
    include_zero: bool = True  # the y axis starts at 0 (rates, counts); False for losses
    x_from_zero: bool = False  # the x axis starts at 0 (time since the start), not at the first point
    x_format: Callable[[float], str] | None = None


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    group: int = 0  # colour class


@dataclass(frozen=True)
class BarChart:
    chart_id: str
    title: str
    unit: str
    bars: list[Bar]
    empty: str = "no data yet"
    legend: list[str] = field(default_factory=list)  # names of the colour groups, if more than one


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = [start]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(start + step * len(ticks))
    return ticks


def format_number(v: float) -> str:
    """Short tick/tooltip text: 1.2k, 3.4M, 0.00025, 12."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def format_duration(seconds: float) -> str:
    """An elapsed-time tick: 45s, 12m, 3.5h."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _figure(chart_id: str, title: str, points: int, body: str, legend: Sequence[str] = ()) -> Markup:
    items = "".join(
        f'<li><span class="swatch s{i % PALETTE_SIZE}"></span>{escape(name)}</li>' for i, name in enumerate(legend)
    )
    legend_html = f'<ul class="legend">{items}</ul>' if len(legend) > 1 else ""
    return Markup(
        f'<figure class="chart" id="chart-{escape(chart_id)}" data-chart="{escape(chart_id)}" data-points="{points}">'
        f"<figcaption>{escape(title)}</figcaption>{body}{legend_html}</figure>"
    )


def _empty(message: str) -> str:
    return f'<p class="chart-empty muted">{escape(message)}</p>'


def render_line_chart(chart: LineChart) -> Markup:
    """A line chart (one path per series, broken at gaps), or the empty-state message."""
    plotted = [s.plotted for s in chart.series]
    n_points = sum(len(p) for p in plotted)
    if n_points == 0:
        return _figure(chart.chart_id, chart.title, 0, _empty(chart.empty))
    xs = [x for p in plotted for x, _ in p]
    ys = [y for p in plotted for _, y in p]
    y_lo, y_hi = (min(0.0, min(ys)) if chart.include_zero else min(ys)), max(ys)
    y_ticks = nice_ticks(y_lo, y_hi)
    x_ticks = nice_ticks(min(0.0, min(xs)) if chart.x_from_zero else min(xs), max(xs), 6)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    x_text = chart.x_format or format_number
    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(chart.title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for t in y_ticks:
        y = sy(t)
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{format_number(t)}</text>')
    for t in x_ticks:
        x = sx(t)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">{escape(x_text(t))}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{sy(y0):.1f}" y2="{sy(y0):.1f}"/>'
    )
    parts.append(
        f'<text class="axis-label" x="{MARGIN_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{escape(chart.x_label)}</text>"
    )
    parts.append(
        f'<text class="axis-label" x="12" y="{MARGIN_TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2:.0f})">{escape(chart.y_label)}</text>'
    )
    for i, s in enumerate(chart.series):
        cls = f"s{i % PALETTE_SIZE}"
        d, pen_down = [], False
        for x, y in s.points:
            if y is None or not math.isfinite(y):
                pen_down = False
                continue
            d.append(f"{'L' if pen_down else 'M'}{sx(x):.1f} {sy(y):.1f}")
            pen_down = True
        if d:
            parts.append(f'<path class="line {cls}" data-series="{escape(s.name)}" d="{" ".join(d)}"/>')
        if len(s.plotted) <= MAX_DOTS:
            for x, y in s.plotted:
                parts.append(
                    f'<circle class="dot {cls}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5">'
                    f"<title>{escape(s.name)}: {format_number(y)} at {escape(x_text(x))}</title></circle>"
                )
    parts.append("</svg>")
    return _figure(chart.chart_id, chart.title, n_points, "".join(parts), [s.name for s in chart.series])


BAR_ROW_H, BAR_LABEL_W, BAR_VALUE_W = 22, 170, 70


def render_bar_chart(chart: BarChart) -> Markup:
    """Horizontal bars, one row per bar, scaled to the largest value; or the empty-state message."""
    if not chart.bars:
        return _figure(chart.chart_id, chart.title, 0, _empty(chart.empty))
    top = max(b.value for b in chart.bars) or 1
    height = MARGIN_TOP + BAR_ROW_H * len(chart.bars) + 8
    room = WIDTH - BAR_LABEL_W - BAR_VALUE_W
    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(chart.title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, bar in enumerate(chart.bars):
        y = MARGIN_TOP + i * BAR_ROW_H
        w = max(1.0, bar.value / top * room) if bar.value > 0 else 0.0
        label = escape(bar.label)
        value = f"{format_number(bar.value)}{(' ' + chart.unit) if chart.unit else ''}"
        parts.append(f'<text class="tick" x="{BAR_LABEL_W - 8}" y="{y + 15}" text-anchor="end">{label}</text>')
        parts.append(
            f'<rect class="hbar s{bar.group % PALETTE_SIZE}" x="{BAR_LABEL_W}" y="{y + 3}" width="{w:.1f}" '
            f'height="{BAR_ROW_H - 6}"><title>{label}: {escape(value)}</title></rect>'
        )
        parts.append(f'<text class="value" x="{BAR_LABEL_W + w + 6:.1f}" y="{y + 15}">{escape(value)}</text>')
    parts.append("</svg>")
    return _figure(chart.chart_id, chart.title, len(chart.bars), "".join(parts), chart.legend)
