"""What a box would say: the frame pipeline scored on test close-ups, test ``none`` photos and
wide test scenes, through ONNX Runtime on the exported file (``edge.perception``).

Close-up accuracy of the probabilities says nothing about an empty park: these figures do.
Scenes are built from the dataset's *test* split only (test pets pasted into test ``none``
backgrounds; see ``cloud.evaluation.scenes``), so no photo was trained or calibrated on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.config import EvaluationConfig
from cloud.evaluation.metrics import rejection_roc
from cloud.evaluation.scenes import build_specs, render
from edge.config import InferenceConfig
from edge.model import load_model
from edge.perception.config import RegionsConfig
from edge.perception.pipeline import FramePipeline, FrameResult
from edge.preprocess import U8, load_image
from shared.modelpkg import NONE_LABEL
from shared.perception import pet_evidence

BATCH_IMAGES = 8
BATCH_SCENES = 4


def _rate(hits: Sequence[bool]) -> float | None:
    return float(np.mean(hits)) if len(hits) else None


def _classify(
    pipe: FramePipeline, loads: Sequence[Callable[[], U8]], per: int, progress: Callable[[int], None] | None
) -> list[FrameResult]:
    out: list[FrameResult] = []
    for i in range(0, len(loads), per):
        out += pipe.classify([f() for f in loads[i : i + per]])
        if progress:
            progress(len(loads[i : i + per]))
    return out


@dataclass(frozen=True)
class Perception:
    """The perception figures, and the box's outcome for each test image in order (a model
    label, the dataset's ``none`` label, or ``abstain``): the gate judges a rejecting model on
    those outcomes (``cloud.evaluation.metrics.decision_metrics``)."""

    figures: dict[str, Any]
    decisions: list[str]


def evaluate_perception(
    onnx_path: Path,
    items: Sequence[tuple[Path, str]],
    cfg: EvaluationConfig,
    progress: Callable[[int], None] | None = None,
) -> Perception | None:
    """What a box says about the test split and the test scenes, or None for a model that cannot
    reject (old packages)."""
    infer = InferenceConfig(threads=min(os.cpu_count() or 1, 64))
    model = load_model(onnx_path, infer, verification="evaluation")
    rej = model.metadata.rejection
    if rej is None or not rej.active:
        return None
    none = rej.none_label or NONE_LABEL
    abstain = InferenceConfig().confidence_threshold  # the edge default
    pipe = FramePipeline(model, RegionsConfig(), abstain)
    pets = [(p, lab) for p, lab in items if lab != none]
    negs = [p for p, lab in items if lab == none]
    res = _classify(pipe, [partial(load_image, p) for p, _ in items], BATCH_IMAGES, progress)
    pet_hits = [r.label == lab for r, (_, lab) in zip(res, items, strict=True) if lab != none]
    none_hits = [r.label == NONE_LABEL for r, (_, lab) in zip(res, items, strict=True) if lab == none]
    decisions = [none if r.label == NONE_LABEL else r.label for r in res]
    out: dict[str, Any] = {
        "closeup_pets_right": _rate(pet_hits),
        "closeup_none_rejected": _rate(none_hits),
        "closeup_abstained": _rate([r.label == "abstain" for r in res]),
        "n_closeup_pets": len(pet_hits),
        "n_closeup_none": len(none_hits),
        "threshold": pipe.threshold,
        "region_threshold": pipe.region_threshold,
        "abstain_threshold": abstain,
        "regions": RegionsConfig().model_dump(mode="json"),
    }
    if pets and negs:
        ev: list[np.ndarray] = []
        paths = [p for p, _ in items]
        for i in range(0, len(paths), 32):
            o = model.run_full(model.preprocessor([load_image(p) for p in paths[i : i + 32]]))
            e = pet_evidence(o.probs, o.pet_score, model.labels, rej, full=True)
            assert e is not None  # rejection is active
            ev.append(e)
        evid = np.concatenate(ev)
        is_neg = np.array([lab == none for _, lab in items])
        roc = rejection_roc(evid[~is_neg], evid[is_neg])
        out["rejection_auroc"], out["rejection_fpr_at_95_tpr"] = roc["auroc"], roc["fpr_at_95_tpr"]
    else:
        out["rejection_auroc"] = out["rejection_fpr_at_95_tpr"] = None
    if pets and negs and (cfg.scenes or cfg.empty_scenes):
        specs = build_specs(
            pets, negs, cfg.scenes, cfg.empty_scenes, cfg.seed, (cfg.scene_min_height, cfg.scene_max_height)
        )
        sres = _classify(pipe, [partial(render, s) for s in specs], BATCH_SCENES, progress)
        for kind, name in (
            ("pet", "scene_pets_right"),
            ("grey", "grey_scene_pets_right"),
            ("empty", "empty_scenes_rejected"),
        ):
            hits = [r.label == s.label for r, s in zip(sres, specs, strict=True) if s.kind == kind]
            out[name] = _rate(hits)
            out[f"n_{kind}_scenes"] = len(hits)
        out["scene_height"] = [cfg.scene_min_height, cfg.scene_max_height]
    else:
        out["scene_pets_right"] = out["grey_scene_pets_right"] = out["empty_scenes_rejected"] = None
    return Perception(out, decisions)
