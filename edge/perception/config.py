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
