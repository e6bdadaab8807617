"""``[inference.regions]``: how a frame is cut into regions to classify."""

from __future__ import annotations

from pydantic import Field, field_validator

from shared.config import Section


class RegionsConfig(Section):
    """Regions per frame. Each region costs one model input (about 14 ms on a 2-core box).

    Stills (and frames without motion information) are tiled at each scale in ``tile_scales``
    (tile side as a fraction of the frame's shorter side) with at least ``tile_overlap`` between
    neighbours, so a pet at 20-40 % of the frame height fills a good part of some tile wherever it
    is, edges included. The whole-frame view (the package's own preprocessing, exactly what the
    model was tested on) is always classified. With motion boxes, the tiles give way to squares
    around the moving parts (``tiles_with_motion`` keeps both).

    A second look: a pet at a third of a tile's height is seen at a third of the model's
    resolution, and small dogs then pass for cats or for nothing. So after the first pass the
    ``second_look`` tiles with the most pet evidence are cut into a
    ``second_look_grid`` x ``second_look_grid`` of overlapping squares of ``second_look_scale``
    of their side and classified too, in one more batched run. On the issue-11 scenes a crop
    around the pet itself is right 0.967 of the time against 0.933 for the tiles; the second
    look recovers most of that for 4 more regions a frame. Motion squares are drawn around the
    moving pet already, so a frame with motion (and no tiles) gets no second look.
    """

    enabled: bool = Field(True, description="false = only the whole-frame view (the old behaviour)")
    full_frame: bool = True
    tile_scales: list[float] = Field(default_factory=lambda: [0.7, 0.45], max_length=4)
    tile_overlap: float = Field(0.25, ge=0, le=0.75, description="least overlap of neighbouring tiles")
    min_region: int = Field(
        192,
        ge=16,
        le=4096,
        description="pixels; smaller tiles are skipped (they add no detail), smaller boxes enlarged",
    )
    max_regions: int = Field(24, ge=1, le=128)
    motion_margin: float = Field(0.25, ge=0, le=2, description="margin added around a motion box")
    max_motion_regions: int = Field(4, ge=0, le=32)
    tiles_with_motion: bool = False
    second_look: int = Field(1, ge=0, le=4, description="strongest tiles looked at again, closer (0 = off)")
    second_look_scale: float = Field(0.67, ge=0.3, le=0.9, description="closer square side / region side")
    second_look_grid: int = Field(2, ge=1, le=3, description="closer squares per side of a region")
    threshold: float | None = Field(
        None, ge=0, le=1, description="pet-evidence threshold of the whole-frame view; default: the package's"
    )
    region_threshold: float | None = Field(
        None, ge=0, le=1, description="pet-evidence threshold of the other regions; default: the package's"
    )

    @field_validator("tile_scales")
    @classmethod
    def _scales(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.1 <= s <= 1.0:
                raise ValueError(f"tile scale {s} must be between 0.1 and 1.0 (fraction of the shorter side)")
        return v
