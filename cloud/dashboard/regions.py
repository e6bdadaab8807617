"""What a prediction says about its frame, for the pages: outcome, lighting, the regions that held
a pet as text, and those regions drawn over the frame's snapshot.

A snapshot is the whole camera frame, so a region's ``box`` (frame pixels) is drawn on an SVG
whose view box is the JPEG's own size, laid over the image; the JPEG's size is read from its
header, not by decoding it. A box scales a frame down only when its JPEG would not fit the
Snapshot message (very detailed 1080p/4K frames, ``edge/snapshots.py``), and the message does not
say from what size: when a box reaches outside the JPEG the frame was certainly scaled, and
nothing is drawn (the regions stay listed as text) rather than boxes in the wrong place.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from markupsafe import Markup

from cloud.fleet.outcomes import mode_of, outcome, regions_text
from cloud.fleet.records import Prediction

# JPEG start-of-frame markers that carry the image size (baseline, progressive, lossless...).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_COLOURS = {"cat": "#f79009", "dog": "#2e90fa"}
TEXT_LIMIT = 4  # regions listed per prediction in a table row (all are drawn; lineage lists all)


def jpeg_size(path: Path, limit: int = 1 << 20) -> tuple[int, int] | None:
    """(width, height) from the JPEG's start-of-frame segment; None if it is not a readable JPEG."""
    try:
        with path.open("rb") as f:
            data = f.read(limit)
    except OSError:
        return None
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF and i + 9 <= len(data):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None
        i += 2 + length
    return None


def decorate(pred: Prediction | Mapping[str, Any]) -> dict[str, Any]:
    """The prediction as the pages show it: its fields, and ``outcome`` (a pet label, ``none`` or
    ``abstain``), ``lighting`` and ``regions_text``."""
    p = pred.to_dict() if isinstance(pred, Prediction) else dict(pred)
    p["outcome"] = outcome(str(p.get("label")), p.get("abstain"))
    p["lighting"] = mode_of(p.get("ir")) or "—"
    p["regions_text"] = regions_text(p.get("regions"), limit=TEXT_LIMIT)
    return p


def fits(regions: list[dict[str, Any]], size: tuple[int, int]) -> bool:
    """Whether every box lies inside a frame of ``size`` (else the snapshot was scaled down)."""
    w, h = size
    for r in regions:
        box = r.get("box") or []
        if len(box) == 4 and (box[0] + box[2] > w or box[1] + box[3] > h):
            return False
    return True


def overlay(regions: list[dict[str, Any]] | None, size: tuple[int, int] | None) -> Markup:
    """An SVG laid over the snapshot, one labelled rectangle per region; empty when there is
    nothing to draw or the frame size is unknown."""
    if not regions or not size:
        return Markup("")
    w, h = size
    if not fits(regions, size):
        return Markup("")
    stroke = max(2, round(max(w, h) / 300))
    font = max(12, round(h / 30))
    parts = [
        f'<svg class="regions" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(regions_text(regions))}" '
        'style="position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none">'
    ]
    for r in regions:
        box = r.get("box") or []
        if len(box) != 4:
            continue
        x, y, bw, bh = (int(v) for v in box)
        label = str(r.get("label", "?"))
        colour = _COLOURS.get(label, "#12b76a")
        conf = r.get("confidence")
        text = f"{label} {conf:.2f}" if isinstance(conf, (int, float)) else label
        parts.append(
            f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" fill="none" stroke="{colour}" '
            f'stroke-width="{stroke}"/><text x="{x + stroke}" y="{max(y - stroke, font)}" '
            f'font-size="{font}" fill="{colour}" stroke="#000" stroke-width="{max(1, font // 12)}" '
            f'paint-order="stroke">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
