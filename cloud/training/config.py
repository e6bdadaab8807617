from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.config import Section


class SearchSpace(Section):
    """Values tried for the head. Every key is a list; grid search takes their product."""

    lr: list[float] = Field(default_factory=lambda: [1e-3, 3e-3])
    weight_decay: list[float] = Field(default_factory=lambda: [1e-4, 1e-2])
    epochs: list[int] = Field(default_factory=lambda: [15])
    label_smoothing: list[float] = Field(default_factory=lambda: [0.0, 0.1])
    hidden: list[int] = Field(default_factory=lambda: [0], description="0 = linear head")
    dropout: list[float] = Field(default_factory=lambda: [0.2])


class TrainConfig(Section):
    seed: int = 1234
    search: Literal["grid", "random"] = "grid"
    trials: int | None = Field(None, ge=1, description="random: number of draws; grid: cap (None = all)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    batch_size: int = Field(32, ge=1)
    augment_copies: int = Field(2, ge=0, description="augmented feature copies per train image")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per core")
    feature_engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto = torch on a GPU, ONNX Runtime on a CPU (about 3x faster here)"
    )
    finetune_epochs: int = Field(0, ge=0, description="end-to-end epochs after the head search (GPU advised)")
    finetune_lr: float = Field(1e-4, gt=0)
    finetune_blocks: int = Field(3, ge=0, description="last MBConv blocks unfrozen when fine-tuning")
    scene_tiles: int = Field(
        1000,
        ge=0,
        le=20000,
        description="training scenes (plus greyscale copies) whose tiles train the head; needs none/",
    )
    scene_tiles_empty: int = Field(500, ge=0, le=20000, description="empty training scenes (none tiles)")
    calibration_scenes: int = Field(
        100,
        ge=0,
        le=20000,
        description="validation scenes (plus greyscale copies) the thresholds are chosen on",
    )
    calibration_empty_scenes: int = Field(100, ge=0, le=20000)
    feature_cache_dir: Path | None = Field(None, description="default: <data_dir>/feature-cache")
    space: SearchSpace = Field(default_factory=SearchSpace)
