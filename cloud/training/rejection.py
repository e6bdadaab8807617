"""Choosing the rejection thresholds on validation frames, with the box's own frame rule.

Why frames and not photos: a wide frame is cut into a dozen regions, and one false region makes
a false frame, so a per-region threshold that looks fine on photos lets most empty scenes
through. Here every validation frame (close-up photos of the validation part, and scenes built
from validation pets on validation ``none`` backgrounds, colour and greyscale, plus empty ones)
is cut into regions exactly as the box does; the backbone's features of each region are cached;
and for every candidate pair (whole-frame threshold, region threshold) the frame outcomes are
computed with the same rule as ``edge.perception.pipeline.aggregate`` (vectorised here). The pair
with the best *worst* margin to the issue's five targets wins; ties go to the higher mean.
Nothing from the test split is ever looked at.

Evidence is the log-odds blend of the ImageNet pet score and the head's ``1 - P(none)``
(``RejectionSpec.evidence = "logit"``); the blend's weight is chosen with the thresholds, from
``WEIGHTS``. The candidate thresholds are quantiles of the validation evidence itself, not a
fixed grid: a head trained on ``none`` tiles is sure, and its useful thresholds sit between
0.99 and 0.9999, where a grid in steps of 0.02 has no point at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.perception.config import RegionsConfig
from edge.perception.pipeline import region_tensors
from edge.perception.regions import plan_regions
from edge.preprocess import Preprocessor
from shared.modelpkg import PreprocessSpec, RejectionSpec
from shared.perception import none_confidence, pet_evidence, pet_probs

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

REGION_CACHE_VERSION = "regions-v1"
# The targets; thresholds are chosen to clear all of them by the widest margin.
TARGETS = {
    "closeup_pets_right": 0.98,
    "closeup_none_rejected": 0.95,
    "scene_pets_right": 0.95,
    "grey_scene_pets_right": 0.90,
    "empty_scenes_rejected": 0.95,
}
GRID = np.round(np.arange(0.02, 0.99, 0.02), 4)  # the prior's search space (no none photos)
# Weights of the ImageNet score in the evidence. Never 0: ImageNet's 1.2 M photos know kinds of
# non-pet a few hundred none photos may lack. Never above one half: on wide frames the head's
# none class, trained on scene tiles, is the better judge (validation frames: empty scenes
# rejected 0.87 at 0.5 against 0.95 at 0.15, close-up pets unchanged).
WEIGHTS = (0.15, 0.3, 0.5)
FULL_QUANTILES = np.linspace(0.0, 1.0, 51)  # of every frame's whole-view evidence
REGION_QUANTILES = np.linspace(0.5, 0.999, 70)  # of every region's evidence
PRIOR_THRESHOLD = 0.5  # no none photos: ImageNet itself puts more mass on pets than on anything else


@dataclass
class FrameFeatures:
    kind: str  # "closeup", "pet", "grey" or "empty"
    truth: str  # a pet label or "none"
    sources: list[str]
    feats: F32  # (regions, 1280)


@dataclass
class FrameSignals:
    kind: str
    truth: str
    sources: list[str]
    probs: F32
    pet_score: F32 | None


def _cache_path(root: Path, key: str, cfg: RegionsConfig, spec: PreprocessSpec, backbone_id: str) -> Path:
    blob = json.dumps(
        [REGION_CACHE_VERSION, key, cfg.model_dump(mode="json"), spec.model_dump(mode="json"), backbone_id],
        sort_keys=True,
    )
    h = hashlib.sha256(blob.encode()).hexdigest()[:32]
    return root / h[:2] / f"{h}.npz"


def frame_features(
    frames: Sequence[tuple[str, str, str, Callable[[], U8]]],
    cfg: RegionsConfig,
    spec: PreprocessSpec,
    backbone: Callable[[F32], F32],
    backbone_id: str,
    cache_dir: Path,
    batch: int = 48,
    progress: Callable[[int], None] | None = None,
) -> list[FrameFeatures]:
    """Backbone features of every region of every frame ``(key, kind, truth, load)``, cached on
    disk by frame key, region settings, preprocessing and backbone."""
    pre = Preprocessor(spec)
    out: list[FrameFeatures | None] = [None] * len(frames)
    todo: list[tuple[int, list[str], F32, Path]] = []
    pending = 0

    def run() -> None:
        nonlocal pending
        if not todo:
            return
        feats = backbone(np.concatenate([t for _, _, t, _ in todo]))
        start = 0
        for i, sources, t, path in todo:
            f = feats[start : start + len(t)]
            start += len(t)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with tmp.open("wb") as fh:
                np.savez(fh, feats=f, sources=np.array(sources))
            tmp.replace(path)
            _, kind, truth, _ = frames[i]
            out[i] = FrameFeatures(kind, truth, sources, f)
        if progress:
            progress(len(todo))
        todo.clear()
        pending = 0

    for i, (key, kind, truth, load) in enumerate(frames):
        path = _cache_path(cache_dir, key, cfg, spec, backbone_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                out[i] = FrameFeatures(kind, truth, [str(s) for s in z["sources"]], z["feats"])
            if progress:
                progress(1)
            continue
        except (OSError, ValueError, KeyError, EOFError):
            pass
        img = load()
        h, w = img.shape[:2]
        regions = plan_regions(w, h, cfg, spec)
        t = region_tensors(img, regions, pre)
        todo.append((i, [r.source for r in regions], t, path))
        pending += len(t)
        if pending >= batch:
            run()
    run()
    return [f for f in out if f is not None]


def signals(
    frames: Iterable[FrameFeatures],
    head_probs: Callable[[F32], F32],
    pet_score: Callable[[F32], F32] | None,
) -> list[FrameSignals]:
    return [
        FrameSignals(
            f.kind, f.truth, f.sources, head_probs(f.feats), None if pet_score is None else pet_score(f.feats)
        )
        for f in frames
    ]


@dataclass
class _Padded:
    ev: F32  # (F, R) evidence, -1 where no region
    conf: F32  # (F, R) head certainty between pet labels
    lab: npt.NDArray[np.int64]  # (F, R) pet label index
    full: npt.NDArray[np.bool_]  # (F, R) whole-frame view
    valid: npt.NDArray[np.bool_]
    kinds: npt.NDArray[np.str_]
    truth: npt.NDArray[np.int64]  # pet label index, -1 for none
    pets: list[str]
    rejection: RejectionSpec


def _pad(frames: Sequence[FrameSignals], labels: Sequence[str], rejection: RejectionSpec) -> _Padded:
    r = max(len(f.sources) for f in frames)
    n = len(frames)
    ev = np.full((n, r), -1.0, np.float32)
    conf = np.zeros((n, r), np.float32)
    lab = np.zeros((n, r), np.int64)
    full = np.zeros((n, r), bool)
    valid = np.zeros((n, r), bool)
    pets: list[str] = []
    for i, f in enumerate(frames):
        e = pet_evidence(f.probs, f.pet_score, labels, rejection)
        pets, q = pet_probs(f.probs, labels, rejection)
        k = len(f.sources)
        ev[i, :k] = 1.0 if e is None else e
        conf[i, :k] = q.max(axis=1)
        lab[i, :k] = q.argmax(axis=1)
        full[i, :k] = [s == "full" for s in f.sources]
        valid[i, :k] = True
    truth = np.array([pets.index(f.truth) if f.truth in pets else -1 for f in frames], np.int64)
    return _Padded(ev, conf, lab, full, valid, np.array([f.kind for f in frames]), truth, pets, rejection)


def outcomes(p: _Padded, t: float, t_region: float, abstain: float) -> npt.NDArray[np.int64]:
    """Frame outcome per frame: pet label index, -1 none, -2 abstain (``aggregate``'s rule)."""
    thr = np.where(p.full, t, t_region)
    is_pet = p.valid & ((thr <= 0) | (p.ev >= thr))
    sure = is_pet & (p.conf >= abstain)
    strength = np.where(sure, p.ev * p.conf, -1.0)
    best = strength.argmax(axis=1)
    rows = np.arange(len(p.ev))
    below = np.clip(none_confidence(np.clip(p.ev, 0.0, 1.0), thr, p.rejection), 0.5, 1.0)
    none_conf = np.where(p.valid & ~is_pet, below, 1.0)
    out = np.where(none_conf.min(axis=1) >= abstain, -1, -2)
    out = np.where(is_pet.any(axis=1), -2, out)
    return np.where(sure.any(axis=1), p.lab[rows, best], out)


def figures(p: _Padded, t: float, t_region: float, abstain: float) -> dict[str, float]:
    o = outcomes(p, t, t_region, abstain)
    closeup = p.kinds == "closeup"
    groups = {
        "closeup_pets_right": closeup & (p.truth >= 0),
        "closeup_none_rejected": closeup & (p.truth < 0),
        "scene_pets_right": p.kinds == "pet",
        "grey_scene_pets_right": p.kinds == "grey",
        "empty_scenes_rejected": p.kinds == "empty",
    }
    out: dict[str, float] = {}
    for name, mask in groups.items():
        if mask.any():
            want = np.where(p.truth[mask] >= 0, p.truth[mask], -1)
            out[name] = float((o[mask] == want).mean())
    return out


def choose_thresholds(
    frames: Sequence[FrameSignals], labels: Sequence[str], rejection: RejectionSpec, abstain: float
) -> tuple[RejectionSpec, dict[str, float], str]:
    """The package's rejection (evidence blend, whole-frame and region thresholds), its
    validation figures, and how it was chosen."""
    first = _pad(frames, labels, rejection)
    has_negatives = bool(((first.kinds == "empty") | ((first.kinds == "closeup") & (first.truth < 0))).any())
    if not has_negatives:
        # Nothing to measure false positives on: keep the ImageNet prior, but never reject more
        # than 1 % of the validation pets' whole-frame views.
        spec = rejection.model_copy(update={"evidence": "logit"})
        p = _pad(frames, labels, spec)
        full_ev = p.ev[p.full & (p.truth[:, None] >= 0)]
        t = min(PRIOR_THRESHOLD, float(np.quantile(full_ev, 0.01))) if full_ev.size else PRIOR_THRESHOLD
        spec = spec.model_copy(update={"threshold": t, "region_threshold": PRIOR_THRESHOLD})
        return spec, figures(p, t, PRIOR_THRESHOLD, abstain), "prior (no none photos in validation)"
    best: tuple[float, float, float, float, float] | None = None
    for w in WEIGHTS:
        spec = rejection.model_copy(update={"evidence": "logit", "score_weight": w})
        p = _pad(frames, labels, spec)
        full_c = np.unique(np.quantile(p.ev[p.full & p.valid], FULL_QUANTILES))
        tiles = p.ev[~p.full & p.valid]
        # Either threshold may sit anywhere the other's evidence does (tr >= t below).
        if tiles.size:
            full_c = np.unique(np.concatenate([np.quantile(tiles, REGION_QUANTILES), full_c]))
        region_c = full_c
        for t in full_c:
            for tr in region_c:
                if tr < t:
                    continue  # tiles are many: never looser than the whole-frame view
                f = figures(p, float(t), float(tr), abstain)
                margin = min(f[k] - TARGETS[k] for k in f)
                mean = float(np.mean(list(f.values())))
                if best is None or (margin, mean) > best[:2]:
                    best = (margin, mean, w, float(t), float(tr))
    assert best is not None
    _, _, w, t, tr = best
    spec = rejection.model_copy(
        update={"evidence": "logit", "score_weight": w, "threshold": t, "region_threshold": tr}
    )
    return (
        spec,
        figures(_pad(frames, labels, spec), t, tr, abstain),
        "best worst-margin to the targets on validation frames",
    )


__all__ = [
    "TARGETS",
    "FrameFeatures",
    "FrameSignals",
    "choose_thresholds",
    "figures",
    "frame_features",
    "signals",
]
