"""Pet evidence v2 (log-odds blend) and how the cloud chooses its weight and thresholds, with the
box's second look on validation frames. Pure but for one cache folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud.training.rejection import (
    FULL_WEIGHTS,
    WEIGHTS,
    FrameSignals,
    RegionSource,
    centre,
    choose_thresholds,
    figures,
    frame_features,
    second_look_features,
    smoothed,
    whole_view_weight,
)
from cloud.training.rejection import _pad as pad
from edge.perception.config import RegionsConfig
from edge.perception.regions import plan_regions
from shared.modelpkg import PreprocessSpec, RejectionSpec
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
        ev = pet_evidence(probs, score, LABELS, rej, full=False)
        assert ev is not None
        for k in range(2):
            z = w * _logit(score[k]) + (1 - w) * _logit(1 - probs[k, 2])
            assert ev[k] == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    # A package may weigh the score apart for whole-frame views; without it, one weight for all.
    rej = RejectionSpec(
        none_label="none", score_output="pet_score", threshold=0.5, evidence="logit",
        score_weight=0.15, full_score_weight=0.7,
    )  # fmt: skip
    both = pet_evidence(probs, score, LABELS, rej, full=[True, False])
    assert both is not None
    for k, w in ((0, 0.7), (1, 0.15)):
        z = w * _logit(score[k]) + (1 - w) * _logit(1 - probs[k, 2])
        assert both[k] == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    assert rej.model_copy(update={"full_score_weight": None}).weight(True) == 0.15
    # The old geometric mean stays what older packages were calibrated with.
    old = RejectionSpec(none_label="none", score_output="pet_score", threshold=0.5)
    ev_old = pet_evidence(probs, score, LABELS, old, full=True)
    assert ev_old is not None and ev_old[0] == pytest.approx(np.sqrt(0.9 * 0.01), rel=1e-4)


def test_none_confidence_is_a_half_at_the_threshold_and_scale_free_in_log_odds() -> None:
    rej = RejectionSpec(none_label="none", threshold=0.999, evidence="logit")
    assert none_confidence(np.array([0.999]), 0.999, rej)[0] == pytest.approx(0.5)
    # one log-odds unit below the threshold means the same at 0.3 as at 0.999
    for t in (0.3, 0.999):
        e = 1 / (1 + np.exp(-(_logit(t) - 1)))
        assert none_confidence(np.array([e]), t, rej)[0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-6)
    # below a strict threshold, a clearly empty tile is a sure none, not an abstention
    out = decide(np.array([[0.05, 0.05, 0.9]]), None, LABELS, rej, full=False)
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
    assert spec.full_score_weight is None  # no close-ups to choose it on: one weight for both views
    assert spec.threshold is not None and spec.region_threshold is not None
    assert figs["scene_pets_right"] == 1.0 and figs["empty_scenes_rejected"] == 1.0, (spec, figs)
    # the same frames through the old fixed 0.02 grid: no grid point separates them
    old = pad(frames, list(LABELS), base.model_copy(update={"evidence": "logit", "score_weight": 0.15}))
    best_old = max(
        min(f.values()) for t in np.arange(0.02, 0.99, 0.02) for f in [figures(old, float(t), float(t), 0.6)]
    )
    assert best_old < 1.0
    assert "validation" in how


def _sig(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _view_frames(rng: np.random.Generator) -> list[FrameSignals]:
    """Whole photos where only ImageNet tells a hard object from a pet (the head is sure of both),
    and scene tiles where only the head tells a small pet from an empty tile (ImageNet is
    unsure of both): no one blend weight serves both views."""
    frames: list[FrameSignals] = []

    def rows(head: tuple[float, float], score: tuple[float, float], n: int, cat: float) -> tuple:
        p_pet = _sig(rng.uniform(*head, n))
        probs = np.stack([p_pet * cat, p_pet * (1 - cat), 1 - p_pet], axis=1).astype(np.float32)
        return probs, _sig(rng.uniform(*score, n)).astype(np.float32)

    for k in range(40):
        truth, cat = ("cat", 0.95) if k % 2 else ("dog", 0.05)
        frames.append(FrameSignals("closeup", truth, ["full"], *rows((5, 8), (1.5, 4), 1, cat)))
        frames.append(FrameSignals("closeup", "none", ["full"], *rows((6, 9), (-7, -4), 1, 0.5)))
        for kind in ("pet", "grey", "empty"):
            full = rows((-2, 0), (-3, -1), 1, cat)
            empty = rows((5, 6.5), (-1, 1.5), 4, cat)
            pet = rows((9, 11), (-3, 0), 1, cat)
            tiles = (
                empty
                if kind == "empty"
                else tuple(np.concatenate([a, b]) for a, b in zip(pet, empty, strict=True))
            )
            probs, score = (np.concatenate([a, b]) for a, b in zip(full, tiles, strict=True))
            frames.append(
                FrameSignals(
                    kind,
                    "none" if kind == "empty" else truth,
                    ["full"] + ["tile"] * (len(probs) - 1),
                    probs,
                    score,
                )
            )
    return frames


def test_the_whole_frame_view_gets_its_own_blend_weight() -> None:
    frames = _view_frames(np.random.default_rng(5))
    base = RejectionSpec(none_label="none", score_output="pet_score", threshold=0.5)
    spec, figs, _ = choose_thresholds(frames, list(LABELS), base, abstain=0.6)
    assert set(figs.values()) == {1.0}, (spec, figs)
    assert spec.full_score_weight in FULL_WEIGHTS and spec.full_score_weight > spec.score_weight
    assert spec.full_score_weight == whole_view_weight(frames, list(LABELS), base)
    # With one weight for both views, no thresholds get every frame right.
    best_tied = 0.0
    for w in WEIGHTS:
        p = pad(frames, list(LABELS), base.model_copy(update={"evidence": "logit", "score_weight": w}))
        cands = np.unique(np.quantile(p.ev[p.valid], np.linspace(0, 1, 101)))
        for t in cands:
            for tr in cands[cands >= t]:
                best_tied = max(best_tied, min(figures(p, float(t), float(tr), 0.6).values()))
    assert best_tied < 1.0


def test_a_plateau_of_good_thresholds_beats_a_lucky_spike() -> None:
    """One pair whose margin a single validation frame lifted, among bad neighbours, against a
    broad region of pairs that are all nearly as good: the broad region is chosen."""
    grid = {(i, j): (-0.05, 0.9) for i in range(12) for j in range(i, 12)}
    grid[(1, 2)] = (0.02, 0.95)  # the spike: best alone
    for i in range(6, 11):
        for j in range(max(i, 7), 12):
            grid[(i, j)] = (0.01, 0.93)  # the plateau
    ranked = smoothed(grid)
    best = max(ranked, key=lambda k: ranked[k])
    assert best[0] >= 6 and best[1] >= 7, best
    assert max(grid, key=lambda k: grid[k]) == (1, 2)  # what the single best pair would have been
    assert smoothed(grid, reach=0) == grid  # no reach: the pairs' own margins


def test_the_middle_of_equally_good_thresholds_is_chosen_not_an_edge() -> None:
    # equally good pairs: whole-frame threshold 0.3-0.9, region threshold 0.95-0.99
    pairs = [
        (0.0, 0.0, 0.97, (0.3, 0.3), t, tr) for t in (0.3, 0.5, 0.7, 0.8, 0.9) for tr in (0.95, 0.97, 0.99)
    ]
    _, _, _, _, t, tr = centre(pairs)  # type: ignore[misc]
    assert (t, tr) == (0.7, 0.97)
    assert centre([]) is None


def test_the_middle_is_of_the_range_not_of_where_candidates_crowd() -> None:
    """Quantile candidates crowd where the evidence is: five equally good whole-frame thresholds
    between 0.2 and 0.24, four more up to 0.9. Their median (0.24) sits at the crowded edge; the
    middle of the range in log-odds (about 0.6) is nearest 0.5."""
    ts = (0.2, 0.21, 0.22, 0.23, 0.24, 0.3, 0.5, 0.7, 0.9)
    pairs = [(0.0, 0.0, 0.97, (0.3, 0.7), t, tr) for t in ts for tr in (0.95, 0.97, 0.99)]
    _, _, _, _, t, tr = centre(pairs)  # type: ignore[misc]
    assert (t, tr) == (0.5, 0.97)


def test_validation_frames_get_the_second_look_the_box_would_take(tmp_path: Path) -> None:
    """The closer squares of the tile the head finds strongest, as ``FramePipeline`` picks them,
    appended to each frame's rows; cached, so a second call runs no backbone."""
    cfg, spec = RegionsConfig(), PreprocessSpec()
    img = np.zeros((720, 1280, 3), np.uint8)
    img[450:650, 1000:1200] = 255  # something bright at the bottom right
    calls: list[int] = []

    def backbone(x: np.ndarray) -> np.ndarray:  # brightness as the "feature": deterministic
        calls.append(len(x))
        return np.repeat(x.mean(axis=(1, 2, 3))[:, None], 1280, axis=1).astype(np.float32)

    def head(f: np.ndarray) -> np.ndarray:  # brighter regions look more like a pet
        pet = 1 / (1 + np.exp(-10 * f[:, 0]))
        return np.stack([pet * 0.9, pet * 0.1, 1 - pet], axis=1).astype(np.float32)

    frames = [("scene-1", "pet", "cat", lambda: img)]
    src = RegionSource(cfg, spec, backbone, "b", tmp_path)
    first = frame_features(frames, src)
    base = RejectionSpec(none_label="none", score_output=None, threshold=0.5)
    args = (head, None, list(LABELS), base)
    looked = second_look_features(frames, first, *args, src)
    n = len(first[0].sources)
    assert looked[0].sources == first[0].sources + ["zoom"] * 4 and looked[0].feats.shape == (n + 4, 1280)
    regions = plan_regions(1280, 720, cfg, spec)
    strongest = max(range(1, n), key=lambda k: head(first[0].feats[k : k + 1])[0, 0])
    assert (
        regions[strongest].x + regions[strongest].w >= 1200
        and regions[strongest].y + regions[strongest].h >= 650
    )
    calls.clear()
    again = second_look_features(frames, first, *args, src)
    assert calls == [] and np.array_equal(again[0].feats, looked[0].feats)
    off = second_look_features(frames, first, *args, replace(src, cfg=RegionsConfig(second_look=0)))
    assert off[0].sources == first[0].sources
