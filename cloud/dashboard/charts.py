"""Server-side SVG charts: no script, no CDN, readable by screen readers and printable.

Each series gets its own dash pattern and a text legend, so colour is never the only thing that
tells lines apart; thresholds are drawn as labelled lines. Long series are thinned to at most
``max_points`` by bucketed min/max so spikes survive downsampling.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = ("#0b5cad", "#b42318", "#1a7f37", "#9a6700", "#6f42c1", "#0f766e")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4")
Point = tuple[float, float]


@dataclass
class Series:
    label: str
    points: list[Point] = field(default_factory=list)


def thin(points: Sequence[Point], max_points: int = 300) -> list[Point]:
    """Pure: at most ~``max_points`` points, keeping each bucket's min and max."""
    pts = [(x, y) for x, y in points if y is not None and not math.isnan(y)]
    if len(pts) <= max_points:
        return pts
    buckets = max(1, max_points // 2)
    size = len(pts) / buckets
    out: list[Point] = []
    for b in range(buckets):
        chunk = pts[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        lo = min(chunk, key=lambda p: p[1])
        hi = max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _fmt_time(ts: float, span: float) -> str:
    try:
        d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return "?"  # a row stored before the protocol bounded timestamps: never a 500
    return d.strftime("%H:%M" if span <= 2 * 86400 else "%m-%d")


def _nice(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.2g}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    unit: str = "",
    width: int = 640,
    height: int = 220,
    y_min: float | None = None,
    y_max: float | None = None,
    thresholds: Sequence[tuple[str, float]] = (),
) -> Markup:
    """A time-series chart; x is epoch seconds (labelled in UTC; the caption says so)."""
    data = [Series(s.label, thin(s.points)) for s in series]
    pts = [p for s in data for p in s.points]
    if not pts:
        return Markup(f'<p class="empty">No {escape(title.lower())} data in this window.</p>')
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    lo = min([*ys, *(t for _, t in thresholds)]) if y_min is None else y_min
    hi = max([*ys, *(t for _, t in thresholds)]) if y_max is None else y_max
    if hi - lo < 1e-9:
        hi = lo + 1.0
    if x1 - x0 < 1e-9:
        x1 = x0 + 1.0
    left, right, top, bottom = 44, 8, 10, 38
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * ph

    out = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="system-ui,sans-serif">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = sy(v)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6470">{_nice(v)}</text>'
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        # data-ts lets the page script relabel the axis in the viewer's own zone.
        out.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="{anchor}" fill="#5b6470" '
            f'data-ts="{x:.0f}" data-span="{x1 - x0:.0f}">{_fmt_time(x, x1 - x0)}</text>'
        )
    for label, t in thresholds:
        y = sy(t)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#b42318" '
            f'stroke-dasharray="4 4"/><text x="{width - right - 2}" y="{y - 3:.1f}" text-anchor="end" '
            f'fill="#b42318">{escape(label)} {_nice(t)}{escape(unit)}</text>'
        )
    legend_x = left
    for i, s in enumerate(data):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        if s.points:
            path = " ".join(
                f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(s.points)
            )
            out.append(
                f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6" '
                f'stroke-dasharray="{dash}"><title>{escape(s.label)}</title></path>'
            )
        ly = height - 8
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2" stroke-dasharray="{dash}"/><text x="{legend_x + 26}" y="{ly}">'
            f"{escape(s.label)}{(' (' + escape(unit) + ')') if unit else ''}</text>"
        )
        legend_x += 40 + 7 * (len(s.label) + len(unit) + 3)
    out.append("</svg>")
    return Markup("".join(out))


def sparkline(
    values: Sequence[float | None],
    *,
    label: str,
    width: int = 120,
    height: int = 28,
    y_min: float = 0.0,
    y_max: float = 100.0,
) -> Markup:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return Markup('<span class="muted">—</span>')
    hi = max(y_max, max(vals))
    step = width / (len(vals) - 1)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{i * step:.1f},{height - 2 - (v - y_min) / (hi - y_min) * (height - 4):.1f}"
        for i, v in enumerate(vals)
    )
    return Markup(
        f'<span class="spark"><svg viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
        f'<path d="{path}" fill="none" stroke="#0b5cad" stroke-width="1.5"/></svg></span>'
    )


def bar_chart(
    groups: Sequence[tuple[str, dict[str, float]]],
    *,
    title: str,
    categories: Sequence[str],
    width: int = 420,
    height: int = 200,
    as_percent: bool = True,
) -> Markup:
    """Grouped bars (e.g. baseline vs observed class mix), each bar labelled with its value."""
    if not groups or not categories:
        return Markup(f'<p class="empty">No data for {escape(title.lower())}.</p>')
    vmax = max([v for _, g in groups for v in g.values()] + [1e-9])
    left, bottom, top = 8, 34, 16
    slot = (width - left * 2) / len(categories)
    bw = slot * 0.8 / len(groups)
    out = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="system-ui,sans-serif">',
        f"<title>{escape(title)}</title>",
    ]
    patterns = ["", 'stroke="#1b1f24" stroke-dasharray="3 2"']
    for ci, cat in enumerate(categories):
        for gi, (gname, g) in enumerate(groups):
            v = g.get(cat, 0.0)
            h = (height - top - bottom) * v / vmax
            x = left + ci * slot + slot * 0.1 + gi * bw
            y = height - bottom - h
            colour = PALETTE[gi % len(PALETTE)]
            text = f"{v * 100:.0f}%" if as_percent else _nice(v)
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{colour}" '
                f'fill-opacity="{1.0 if gi == 0 else 0.45}" {patterns[gi % 2]}>'
                f"<title>{escape(gname)} {escape(cat)}: {text}</title></rect>"
                f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{text}</text>'
            )
        out.append(
            f'<text x="{left + ci * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle" font-weight="600">{escape(cat)}</text>'
        )
    lx = left
    for gi, (gname, _) in enumerate(groups):
        out.append(
            f'<rect x="{lx}" y="{height - 12}" width="12" height="10" fill="{PALETTE[gi % len(PALETTE)]}" '
            f'fill-opacity="{1.0 if gi == 0 else 0.45}" {patterns[gi % 2]}/>'
            f'<text x="{lx + 16}" y="{height - 3}">{escape(gname)}{" (hatched)" if gi % 2 else ""}</text>'
        )
        lx += 30 + 7 * (len(gname) + 10)
    out.append("</svg>")
    return Markup("".join(out))
