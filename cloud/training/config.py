from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.config import Section


class SearchSpace(Section):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    weight_decay: list[float] = Field(default_factory=lambda: [0.0, 1e-4])
    epochs: list[int] = Field(default_factory=lambda: [30])
    label_smoothing: list[float] = Field(default_factory=lambda: [0.0, 0.1])


class TrainConfig(Section):
    seed: int = 1234
    search: Literal["grid", "random"] = "grid"
    trials: int = Field(6, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    batch_size: int = Field(32, ge=1)
    augment_copies: int = Field(2, ge=0, description="augmented feature copies per train image")
    space: SearchSpace = Field(default_factory=SearchSpace)
