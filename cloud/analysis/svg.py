"""Tiny inline-SVG charts for the analysis report: no JS, no external files, prints fine."""

from __future__ import annotations

from html import escape

W, H, PAD = 360, 160, 28
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def bars(groups: dict[str, dict[str, float]], title: str) -> str:
    """Grouped bars: {series: {category: value in 0..1}} (e.g. baseline vs live class mix)."""
    cats = sorted({c for s in groups.values() for c in s})
    if not cats:
        return ""
    series = list(groups)
    slot = (W - 2 * PAD) / len(cats)
    bw = slot / (len(series) + 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
    ]
    for i, cat in enumerate(cats):
        x0 = PAD + i * slot
        parts.append(
            f'<text x="{x0 + slot / 2:.1f}" y="{H - 10}" font-size="11" '
            f'text-anchor="middle">{escape(cat)}</text>'
        )
        for j, s in enumerate(series):
            v = max(0.0, min(1.0, groups[s].get(cat, 0.0)))
            h = v * (H - 2 * PAD - 10)
            parts.append(
                f'<rect x="{x0 + (j + 0.5) * bw:.1f}" y="{H - PAD - h:.1f}" width="{bw * 0.9:.1f}" '
                f'height="{h:.1f}" fill="{COLORS[j % len(COLORS)]}"><title>{escape(s)} {escape(cat)}: '
                f"{v:.1%}</title></rect>"
            )
    parts += _legend(series)
    return "".join(parts) + "</svg>"


def histograms(edges: list[float], series: dict[str, list[float]], title: str) -> str:
    """Overlaid normalised histograms as step lines (baseline vs live confidence)."""
    if len(edges) < 2:
        return ""
    lo, hi = edges[0], edges[-1]
    norm = {k: [c / (sum(v) or 1) for c in v] for k, v in series.items()}
    top = max((max(v) for v in norm.values() if v), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<text x="{PAD}" y="{H - 10}" font-size="10">{lo:g}</text>',
        f'<text x="{W - PAD}" y="{H - 10}" font-size="10" text-anchor="end">{hi:g}</text>',
    ]

    def X(v: float) -> float:
        return PAD + (v - lo) / (hi - lo) * (W - 2 * PAD)

    def Y(v: float) -> float:
        return H - PAD - v / top * (H - 2 * PAD - 10)

    for j, (name, vals) in enumerate(norm.items()):
        pts = []
        for i, v in enumerate(vals):
            pts += [f"{X(edges[i]):.1f},{Y(v):.1f}", f"{X(edges[i + 1]):.1f},{Y(v):.1f}"]
        parts.append(
            f'<polyline fill="none" stroke="{COLORS[j % len(COLORS)]}" stroke-width="2" '
            f'points="{" ".join(pts)}"><title>{escape(name)}</title></polyline>'
        )
    parts += _legend(list(norm))
    return "".join(parts) + "</svg>"


def line(points: list[tuple[float, float]], title: str, y_max: float = 1.0) -> str:
    """A line over time (x = unix seconds), e.g. labelled accuracy per day."""
    if not points:
        return ""
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pts = " ".join(
        f"{PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD):.1f},{H - PAD - y / y_max * (H - 2 * PAD - 10):.1f}"
        for x, y in points
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
        f'aria-label="{escape(title)}">'
        f'<text x="{PAD}" y="14" font-size="12">{escape(title)}</text>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>'
        f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="2" points="{pts}"/></svg>'
    )


def _legend(series: list[str]) -> list[str]:
    return [
        f'<text x="{W - PAD - 90}" y="{14 + 12 * j}" font-size="10" fill="{COLORS[j % len(COLORS)]}">'
        f"■ {escape(s)}</text>"
        for j, s in enumerate(series)
    ]
