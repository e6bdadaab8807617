from __future__ import annotations

from pydantic import Field

from shared.config import Section


class GateConfig(Section):
    """A model below any of these is registered as failing the gate and can never be approved."""

    min_accuracy: float = Field(0.97, ge=0, le=1)
    min_recall_per_class: float = Field(0.95, ge=0, le=1)
    max_recall_gap: float = Field(0.05, ge=0, le=1)
    max_ece: float = Field(0.05, ge=0, le=1)
