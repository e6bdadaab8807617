"""Regions of a frame to classify: the whole-frame view, tiles, motion boxes, zones, and the
closer squares of a second look. Pure.

Every region except the whole-frame view is a square (enlarged around its centre and shifted to
lie inside the frame when needed): the model takes square inputs, and stretching a wide box
would distort the animal it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edge.perception.config import RegionsConfig
from shared.modelpkg import PreprocessSpec

Source = Literal["full", "tile", "motion", "zone", "zoom"]
CLOSER_FROM: tuple[Source, ...] = ("tile",)  # motion squares are already drawn around the pet
Box = tuple[int, int, int, int]

# A tile nearly the same as the whole-frame view adds cost, not information.
DUPLICATE_IOU = 0.7


@dataclass(frozen=True)
class Region:
    """A part of a frame, in frame pixels."""

    x: int
    y: int
    w: int
    h: int
    source: Source
    zone: str | None = None
    parent: Box | None = None  # a second look's square: the region it was cut from

    @property
    def box(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Zone:
    """A named area of a camera's view: a polygon (three points or more) or a rectangle, in frame pixels."""

    name: str
    points: tuple[tuple[float, float], ...]

    @classmethod
    def rect(cls, name: str, x: float, y: float, w: float, h: float) -> Zone:
        return cls(name, ((x, y), (x + w, y), (x + w, y + h), (x, y + h)))

    def bbox(self) -> tuple[float, float, float, float]:
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def full_box(width: int, height: int, spec: PreprocessSpec) -> Box:
    """The part of the frame the package's own preprocessing sees (shorter side, centre crop)."""
    if spec.crop != "center" or spec.resize != "shorter_side":
        return (0, 0, width, height)
    out_h, out_w = spec.input_size
    scale = spec.resize_to / min(width, height)
    cw, ch = min(width, round(out_w / scale)), min(height, round(out_h / scale))
    return ((width - cw) // 2, (height - ch) // 2, cw, ch)


def square_around(
    x: float, y: float, w: float, h: float, width: int, height: int, margin: float, min_side: int
) -> Box:
    """The square holding box (x, y, w, h) plus ``margin``, at least ``min_side``, inside the frame."""
    side = max(w, h) * (1 + margin)
    side = min(max(side, min_side), width, height)
    s = max(1, round(side))
    cx, cy = x + w / 2, y + h / 2
    left = int(min(max(round(cx - s / 2), 0), width - s))
    top = int(min(max(round(cy - s / 2), 0), height - s))
    return (left, top, s, s)


def _positions(length: int, side: int, overlap: float) -> list[int]:
    """Evenly spaced starts covering [0, length) with neighbours overlapping at least ``overlap``."""
    if side >= length:
        return [0]
    stride = max(1.0, side * (1 - overlap))
    n = math.ceil((length - side) / stride) + 1
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


def tiles(width: int, height: int, cfg: RegionsConfig) -> list[Box]:
    out: list[Box] = []
    short = min(width, height)
    for scale in cfg.tile_scales:
        side = round(short * scale)
        if side < cfg.min_region:
            continue
        for top in _positions(height, side, cfg.tile_overlap):
            for left in _positions(width, side, cfg.tile_overlap):
                out.append((left, top, side, side))
    return out


def plan_regions(
    width: int,
    height: int,
    cfg: RegionsConfig,
    spec: PreprocessSpec,
    motion: Sequence[Box] | None = None,
    zones: Sequence[Zone] = (),
    can_reject: bool = True,
) -> list[Region]:
    """The regions of one frame, whole-frame view first, at most ``cfg.max_regions``.

    ``motion`` None means "unknown" (a still): the frame is tiled. An empty list means "nothing
    moved": only the whole-frame view and the zones. A model that cannot say "none" gets only the
    whole-frame view: every tile of an empty frame would otherwise be called a pet.
    """
    full = full_box(width, height, spec)
    regions: list[Region] = [Region(*full, source="full")] if cfg.full_frame or not cfg.enabled else []
    if not cfg.enabled or not can_reject:
        return regions or [Region(*full, source="full")]
    for z in zones:
        zx, zy, zw, zh = z.bbox()
        zx, zy = max(0.0, zx), max(0.0, zy)
        zw, zh = min(zw, width - zx), min(zh, height - zy)
        if zw <= 0 or zh <= 0:
            continue  # a zone outside this frame (resolution changed): nothing to look at
        regions.append(
            Region(*square_around(zx, zy, zw, zh, width, height, 0.0, cfg.min_region), "zone", z.name)
        )
    boxes: list[tuple[Box, Source]] = []
    if motion is not None:
        moving = sorted(motion, key=lambda b: b[2] * b[3], reverse=True)[: cfg.max_motion_regions]
        boxes += [
            (square_around(*m, width, height, cfg.motion_margin, cfg.min_region), "motion") for m in moving
        ]
    if motion is None or cfg.tiles_with_motion:
        boxes += [(t, "tile") for t in tiles(width, height, cfg)]
    taken = [r for r in regions]
    for box, source in boxes:
        if any(iou(box, (r.x, r.y, r.w, r.h)) >= DUPLICATE_IOU for r in taken):
            continue
        taken.append(Region(*box, source=source))
    if not taken:
        taken = [Region(*full, source="full")]
    return taken[: cfg.max_regions]


def closer(region: Region, cfg: RegionsConfig) -> list[Region]:
    """The second look's squares inside ``region``: a ``second_look_grid`` x ``second_look_grid``
    of squares of ``second_look_scale`` of its side, spread evenly so together they cover it.
    None when they would be smaller than ``min_region``: they would add no detail (the tiles of a
    close-up photo, say, which the whole-frame view already sees up close)."""
    side = round(min(region.w, region.h) * cfg.second_look_scale)
    if side < cfg.min_region:
        return []
    xs = _spread(region.x, region.w, side, cfg.second_look_grid)
    ys = _spread(region.y, region.h, side, cfg.second_look_grid)
    parent = (region.x, region.y, region.w, region.h)
    return [Region(x, y, side, side, source="zoom", parent=parent) for y in ys for x in xs]


def _spread(start: int, length: int, side: int, n: int) -> list[int]:
    """``n`` starts of ``side``-long pieces spread evenly over ``length`` from ``start``, the
    first at its start and the last at its end (one piece: centred)."""
    if n == 1:
        return [start + (length - side) // 2]
    return [start + round(i * (length - side) / (n - 1)) for i in range(n)]
