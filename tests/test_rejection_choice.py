"""Pet evidence v2 (log-odds blend) and how the cloud chooses its weight and thresholds. Pure."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.training.rejection import WEIGHTS, FrameSignals, choose_thresholds, figures
from cloud.training.rejection import _pad as pad
from shared.modelpkg import RejectionSpec
from shared.perception import decide, none_confidence, pet_evidence

LABELS = ("cat", "dog", "none")


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_logit_evidence_weighs_the_imagenet_score_as_the_package_says() -> None:
    probs = np.array([[0.009, 0.001, 0.99], [0.6, 0.3, 0.1]])
    score = np.array([0.9, 0.2])
    for w in (0.0, 0.15, 0.5, 1.0):
        rej = RejectionSpec(
            none_label="none", score_output="pet_score", threshold=0.5, evidence="logit", score_weight=w
        )
        ev = pet_evidence(probs, score, LABELS, rej)
        assert ev is not None
        for k in range(2):
            z = w * _logit(score[k]) + (1 - w) * _logit(1 - probs[k, 2])
            assert ev[k] == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    # The old geometric mean stays what older packages were calibrated with.
    old = RejectionSpec(none_label="none", score_output="pet_score", threshold=0.5)
    ev_old = pet_evidence(probs, score, LABELS, old)
    assert ev_old is not None and ev_old[0] == pytest.approx(np.sqrt(0.9 * 0.01), rel=1e-4)


def test_none_confidence_is_a_half_at_the_threshold_and_scale_free_in_log_odds() -> None:
    rej = RejectionSpec(none_label="none", threshold=0.999, evidence="logit")
    assert none_confidence(np.array([0.999]), 0.999, rej)[0] == pytest.approx(0.5)
    # one log-odds unit below the threshold means the same at 0.3 as at 0.999
    for t in (0.3, 0.999):
        e = 1 / (1 + np.exp(-(_logit(t) - 1)))
        assert none_confidence(np.array([e]), t, rej)[0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-6)
    # below a strict threshold, a clearly empty tile is a sure none, not an abstention
    out = decide(np.array([[0.05, 0.05, 0.9]]), None, LABELS, rej)
    assert out[0][0] == "none" and out[0][1] > 0.99


def _frames(rng: np.random.Generator) -> list[FrameSignals]:
    """Frames whose head is *sure*: empty tiles at 1-P(none) ~ 0.995, pets at ~ 0.9999."""
    frames: list[FrameSignals] = []

    def rows(pet_tiles: int, n: int, truth: str) -> tuple[np.ndarray, np.ndarray]:
        p_none = 10 ** rng.uniform(-2.6, -2.2, n)  # empty: 1 - P(none) in 0.9937..0.9975
        p_none[1 : 1 + pet_tiles] = 10 ** rng.uniform(-4.5, -3.5, pet_tiles)  # a pet: 0.9997..0.99997
        cat = 0.95 if truth != "dog" else 0.05
        probs = np.stack([(1 - p_none) * cat, (1 - p_none) * (1 - cat), p_none], axis=1).astype(np.float32)
        return probs, rng.uniform(0.05, 0.4, n).astype(np.float32)

    for k in range(60):
        truth = "cat" if k % 2 else "dog"
        probs, score = rows(1, 5, truth)
        frames.append(FrameSignals("pet", truth, ["full", "tile", "tile", "tile", "tile"], probs, score))
        probs, score = rows(0, 5, "none")
        frames.append(FrameSignals("empty", "none", ["full", "tile", "tile", "tile", "tile"], probs, score))
    return frames


def test_thresholds_are_found_where_a_sure_head_separates_pets_from_empty_frames() -> None:
    frames = _frames(np.random.default_rng(3))
    base = RejectionSpec(none_label="none", score_output="pet_score", threshold=0.5)
    spec, figs, how = choose_thresholds(frames, list(LABELS), base, abstain=0.6)
    assert spec.evidence == "logit" and spec.score_weight in WEIGHTS
    assert spec.threshold is not None and spec.region_threshold is not None
    assert figs["scene_pets_right"] == 1.0 and figs["empty_scenes_rejected"] == 1.0, (spec, figs)
    # the same frames through the old fixed 0.02 grid: no grid point separates them
    old = pad(frames, list(LABELS), base.model_copy(update={"evidence": "logit", "score_weight": 0.15}))
    best_old = max(
        min(f.values()) for t in np.arange(0.02, 0.99, 0.02) for f in [figures(old, float(t), float(t), 0.6)]
    )
    assert best_old < 1.0
    assert "validation" in how
