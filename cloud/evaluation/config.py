from __future__ import annotations

from pydantic import Field, model_validator

from shared.config import Section


class GateConfig(Section):
    """A model below any of these is registered as failing the gate and can never be approved.

    The perception keys (``None`` = not required) judge what a box will say about frames: the
    frame pipeline on test close-ups and on wide test scenes, and the rejection of test photos
    without a pet. A required figure the evaluation could not compute (no ``none`` photos in the
    dataset's test split) fails the gate, naming the figure.
    """

    min_accuracy: float = Field(0.97, ge=0, le=1)
    min_recall_per_class: float = Field(0.95, ge=0, le=1)
    max_recall_gap: float = Field(0.05, ge=0, le=1)
    max_ece: float = Field(0.05, ge=0, le=1)
    min_closeup_pets_right: float | None = Field(None, ge=0, le=1)
    min_none_rejection: float | None = Field(None, ge=0, le=1, description="test none photos called none")
    min_rejection_auroc: float | None = Field(None, ge=0, le=1)
    max_rejection_fpr_at_95_tpr: float | None = Field(None, ge=0, le=1)
    min_scene_accuracy: float | None = Field(None, ge=0, le=1)
    min_grey_scene_accuracy: float | None = Field(None, ge=0, le=1)
    min_empty_scene_rejection: float | None = Field(None, ge=0, le=1)


class EvaluationConfig(Section):
    """``[evaluation]``: the wide-scene part of every evaluation (test pets pasted into 1280x720
    test ``none`` backgrounds, plus greyscale copies and empty scenes)."""

    scenes: int = Field(100, ge=0, le=10000, description="pet scenes (as many greyscale copies are added)")
    empty_scenes: int = Field(100, ge=0, le=10000)
    scene_min_height: float = Field(0.2, gt=0, le=1, description="pet height as a fraction of the frame's")
    scene_max_height: float = Field(0.4, gt=0, le=1)
    seed: int = 20261203

    @model_validator(mode="after")
    def _order(self) -> EvaluationConfig:
        if self.scene_min_height > self.scene_max_height:
            raise ValueError("scene_min_height must not exceed scene_max_height")
        return self
