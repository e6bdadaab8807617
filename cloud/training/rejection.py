"""Choosing the rejection thresholds on validation frames, with the box's own frame rule.

Why frames and not photos: a wide frame is cut into a dozen regions, and one false region makes
a false frame, so a per-region threshold that looks fine on photos lets most empty scenes
through. Here every validation frame (close-up photos of the validation part, and scenes built
from validation pets on validation ``none`` backgrounds, colour and greyscale, plus empty ones)
is cut into regions exactly as the box does; the backbone's features of each region are cached;
and for every candidate pair (whole-frame threshold, region threshold) the frame outcomes are
computed with the same rule as ``edge.perception.pipeline.aggregate`` (vectorised here). Each
pair is scored by its *worst* margin to the issue's five targets; how the winner is picked
from the best ones is below. Nothing from the test split is ever looked at.

The box also takes a second, closer look at a frame's strongest regions
(``RegionsConfig.second_look``); which regions those are depends on the head, so once the head
that chooses the thresholds is trained, :func:`second_look_features` adds those closer squares'
features to every validation frame (cached by frame and by the regions picked).

The winner is not the single best pair. A few hundred validation frames (50 of them ``none``
close-ups) put each figure's noise at one or two frames, so the best pair is usually one edge of
a broad region of pairs that are equally good within that noise, and an edge is where one more
frame tips a figure: on the issue-11 data the best pair's whole-frame threshold sat at the low
end of its region and let 2-4 more of the test split's 91 no-pet photos through. So: every pair
within ``TOLERANCE`` of the best worst margin counts as equally good; for each blend weight,
the pair nearest the middle of its equally good pairs (the middle of each threshold's range,
in log-odds) is that weight's candidate; and of those, the one whose neighbourhood
(``NEIGHBOURS`` candidate steps each way) has the best mean worst margin wins. A narrow window
that alone separates the classes still wins, as nothing else comes near it.

Evidence is the log-odds blend of the ImageNet pet score and the head's ``1 - P(none)``
(``RejectionSpec.evidence = "logit"``); the regions' blend weight is chosen with the
thresholds, from ``WEIGHTS``, and the whole-frame view's before them (``whole_view_weight``). The candidate
thresholds are quantiles of the validation evidence itself, not a fixed grid: a head trained on
``none`` tiles is sure, and its useful thresholds sit between 0.99 and 0.9999, where a grid in
steps of 0.02 has no point at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud.training.batches import BackboneBatches, save_npz
from edge.perception.config import RegionsConfig
from edge.perception.pipeline import region_tensors
from edge.perception.regions import CLOSER_FROM, Region, closer, plan_regions
from edge.preprocess import Preprocessor
from shared.modelpkg import PreprocessSpec, RejectionSpec
from shared.perception import closer_candidates, logit, none_confidence, pet_evidence, pet_probs

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
# Its weights for the whole-frame view alone. ImageNet learnt its classes on whole photos, so
# there it may weigh more: the head, trained on a few hundred none photos, calls some objects a
# pet at 0.99 (a jeep, a hammer, a lobster) that ImageNet scores below 0.06. Never the head or
# ImageNet alone. Chosen apart from the thresholds, see ``whole_view_weight``.
FULL_WEIGHTS = (0.3, 0.5, 0.7, 0.85)
NEAREST = 3  # pets and no-pets nearest the other class whose log-odds margin breaks AUROC ties
FULL_QUANTILES = np.linspace(0.0, 1.0, 51)  # of every frame's whole-view evidence
REGION_QUANTILES = np.linspace(0.5, 0.999, 70)  # of every region's evidence
PRIOR_THRESHOLD = 0.5  # no none photos: ImageNet itself puts more mass on pets than on anything else
NEIGHBOURS = 2  # candidate steps each way averaged into a pair's margin
GAP = 0.5  # log-odds between neighbouring candidates that gets a candidate of its own
TOLERANCE = 0.01  # pairs this close to the best worst margin (a frame or two) are equally good


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


@dataclass(frozen=True)
class RegionSource:
    """Where the features of a frame's regions come from, and where they are cached: the
    region settings and preprocessing the box uses, the backbone, its id (part of every cache
    key), the cache folder and the rows per backbone run."""

    cfg: RegionsConfig
    spec: PreprocessSpec
    backbone: Callable[[F32], F32]
    backbone_id: str
    cache_dir: Path
    batch: int = 48

    def path(self, key: str) -> Path:
        blob = json.dumps(
            [
                REGION_CACHE_VERSION,
                key,
                self.cfg.model_dump(mode="json"),
                self.spec.model_dump(mode="json"),
                self.backbone_id,
            ],
            sort_keys=True,
        )
        h = hashlib.sha256(blob.encode()).hexdigest()[:32]
        return self.cache_dir / h[:2] / f"{h}.npz"

    def regions(self, img: U8) -> list[Region]:
        h, w = img.shape[:2]
        return plan_regions(w, h, self.cfg, self.spec)


def frame_features(
    frames: Sequence[tuple[str, str, str, Callable[[], U8]]],
    src: RegionSource,
    progress: Callable[[int], None] | None = None,
) -> list[FrameFeatures]:
    """Backbone features of every region of every frame ``(key, kind, truth, load)``, cached on
    disk by frame key, region settings, preprocessing and backbone."""
    pre = Preprocessor(src.spec)
    out: list[FrameFeatures | None] = [None] * len(frames)
    batches = BackboneBatches(src.backbone, src.batch, progress)

    def done(i: int, sources: list[str], path: Path) -> Callable[[F32], None]:
        def store(f: F32) -> None:
            save_npz(path, feats=f, sources=np.array(sources))
            _, kind, truth, _ = frames[i]
            out[i] = FrameFeatures(kind, truth, sources, f)

        return store

    for i, (key, kind, truth, load) in enumerate(frames):
        path = src.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                out[i] = FrameFeatures(kind, truth, [str(s) for s in z["sources"]], z["feats"])
            if progress:
                progress(1)
            continue
        except (OSError, ValueError, KeyError, EOFError):
            pass
        img = load()
        regions = src.regions(img)
        batches.add(region_tensors(img, regions, pre), done(i, [r.source for r in regions], path))
    batches.flush()
    return [f for f in out if f is not None]


def second_look_features(
    frames: Sequence[tuple[str, str, str, Callable[[], U8]]],
    feats: Sequence[FrameFeatures],
    head_probs: Callable[[F32], F32],
    pet_score: Callable[[F32], F32] | None,
    labels: Sequence[str],
    rejection: RejectionSpec,
    src: RegionSource,
) -> list[FrameFeatures]:
    """``feats`` with the rows of the box's second look appended (source ``zoom``): the closer
    squares of the regions this head finds strongest, exactly as
    ``FramePipeline.second_look`` picks them."""
    out = list(feats)
    cfg = src.cfg
    if not cfg.enabled or cfg.second_look <= 0:
        return out
    pre = Preprocessor(src.spec)
    batches = BackboneBatches(src.backbone, src.batch)

    def done(i: int, path: Path) -> Callable[[F32], None]:
        def store(z: F32) -> None:
            save_npz(path, feats=z)
            out[i] = _joined(out[i], z)

        return store

    for i, ((key, _, _, load), f) in enumerate(zip(frames, feats, strict=True)):
        score = None if pet_score is None else pet_score(f.feats)
        eligible = [s in CLOSER_FROM for s in f.sources]
        picks = closer_candidates(head_probs(f.feats), score, labels, rejection, eligible, cfg.second_look)
        if not picks:
            continue
        path = src.path(json.dumps(["second-look", key, picks]))
        try:
            with np.load(path, allow_pickle=False) as z:
                out[i] = _joined(f, z["feats"])
            continue
        except (OSError, ValueError, KeyError, EOFError):
            pass
        img = load()
        regions = src.regions(img)
        if [r.source for r in regions] != f.sources:
            raise ValueError(f"frame {key}: its regions changed since its features were cached")
        looks = [z for k in picks for z in closer(regions[k], cfg)]
        if not looks:
            save_npz(path, feats=np.zeros((0, f.feats.shape[1]), np.float32))
            continue
        batches.add(region_tensors(img, looks, pre), done(i, path))
    batches.flush()
    return out


def _joined(f: FrameFeatures, rows: F32) -> FrameFeatures:
    if not len(rows):
        return f
    return FrameFeatures(f.kind, f.truth, f.sources + ["zoom"] * len(rows), np.concatenate([f.feats, rows]))


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
        e = pet_evidence(f.probs, f.pet_score, labels, rejection, full=[s == "full" for s in f.sources])
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


def smoothed(
    grid: dict[tuple[int, int], tuple[float, float]], reach: int = NEIGHBOURS
) -> dict[tuple[int, int], tuple[float, float]]:
    """Each candidate pair's (worst margin, mean) with the margin averaged over the pairs up to
    ``reach`` steps away on either threshold: a plateau beats a spike of one lucky frame."""
    out: dict[tuple[int, int], tuple[float, float]] = {}
    for (i, j), (_, mean) in grid.items():
        near = [
            grid[(a, b)][0]
            for a in range(i - reach, i + reach + 1)
            for b in range(j - reach, j + reach + 1)
            if (a, b) in grid
        ]
        out[(i, j)] = (float(np.mean(near)), mean)
    return out


# margin, smoothed margin, mean, (region weight, whole-frame weight), t, tr
Pair = tuple[float, float, float, tuple[float, float | None], float, float]


def centre(pairs: Sequence[Pair]) -> Pair | None:
    """The pair nearest the middle of a set of equally good pairs: halfway, in log-odds, between
    the lowest and the highest equally good value of each threshold, the point furthest from
    both edges where one more frame would tip a figure.

    Why not the median of the pairs: the candidates are quantiles of the evidence, so they crowd
    where the frames are, and their median leans towards the crowded edge. On the sample lake
    the whole-frame threshold's equally good range ran from 0.12 to 0.74, and the median of its
    candidates sat at 0.26, just above the hardest no-pet photos of other sets; the middle of the
    range is 0.39."""
    if not pairs:
        return None
    lo = logit(np.array([[p[4], p[5]] for p in pairs]))
    mid = (lo.min(axis=0) + lo.max(axis=0)) / 2
    return pairs[int(np.abs(lo - mid).sum(axis=1).argmin())]


def with_gaps(cands: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """``cands`` plus the middle (in log-odds) of every wide gap between neighbours. Quantiles
    fall where the evidence is, so where a clean gap parts empty tiles from pets no candidate
    falls inside it, and a threshold at either edge leaves the frames beside it abstained."""
    c = np.unique(np.asarray(cands, dtype=np.float64))
    lo = logit(c)
    wide = np.flatnonzero(np.diff(lo) > GAP)
    mids = 1.0 / (1.0 + np.exp(-(lo[wide] + lo[wide + 1]) / 2))
    return np.unique(np.concatenate([c, mids]))


def whole_view_weight(
    frames: Sequence[FrameSignals], labels: Sequence[str], rejection: RejectionSpec
) -> float | None:
    """The ImageNet share in the whole-frame view's evidence that best parts the validation
    close-ups with a pet from those without (AUROC, ties broken by the log-odds margin between
    the ``NEAREST`` of each class closest to the other); None without both kinds.

    Why not with the thresholds, by the frame figures: validation has some 50 no-pet photos, and
    with any weight that keeps them apart the figure is 1.0, so the figures cannot tell a weight
    that parts them by a hair from one that parts them widely, and the hard no-pets a box meets
    later fall in that hair (on the sample lake, two such weights gave 1.0 on validation and
    0.956 against 1.0 on the test split's 91 no-pet photos). A ranking measure keeps seeing the
    difference after the counts are all right.
    """
    close = [f for f in frames if f.kind == "closeup" and "full" in f.sources]
    neg = np.array([f.truth not in labels or f.truth == rejection.none_label for f in close])
    if not close or neg.all() or not neg.any():
        return None
    rows = [(f, f.sources.index("full")) for f in close]  # each close-up's whole-frame view
    probs = np.stack([f.probs[k] for f, k in rows])
    scores = [f.pet_score[k] for f, k in rows if f.pet_score is not None]
    score = np.array(scores) if len(scores) == len(rows) else None
    best: tuple[tuple[float, float], float] | None = None
    for wf in FULL_WEIGHTS:
        spec = rejection.model_copy(update={"evidence": "logit", "full_score_weight": wf})
        ev = pet_evidence(probs, score, labels, spec, full=True)
        if ev is None:
            return None
        lo = logit(ev)
        pos, bad = lo[~neg], lo[neg]
        auroc = float((pos[:, None] > bad[None, :]).mean() + 0.5 * (pos[:, None] == bad[None, :]).mean())
        k = min(NEAREST, len(pos), len(bad))
        key = (round(auroc, 4), float(np.sort(pos)[:k].mean() - np.sort(bad)[-k:].mean()))
        if best is None or key > best[0]:
            best = (key, wf)
    return None if best is None else best[1]


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
    pairs: list[Pair] = []
    whole = whole_view_weight(frames, labels, rejection)
    blends = [(w, whole) for w in WEIGHTS]  # no whole-view weight of its own: score_weight
    for w, wf in blends:
        spec = rejection.model_copy(update={"evidence": "logit", "score_weight": w, "full_score_weight": wf})
        p = _pad(frames, labels, spec)
        found = np.quantile(p.ev[p.full & p.valid], FULL_QUANTILES)
        tiles = p.ev[~p.full & p.valid]
        # Either threshold may sit anywhere the other's evidence does (tr >= t below).
        if tiles.size:
            found = np.concatenate([np.quantile(tiles, REGION_QUANTILES), found])
        cands = with_gaps(found)
        grid: dict[tuple[int, int], tuple[float, float]] = {}
        for i, t in enumerate(cands):
            for j, tr in enumerate(cands):
                if tr < t:
                    continue  # tiles are many: never looser than the whole-frame view
                f = figures(p, float(t), float(tr), abstain)
                grid[(i, j)] = (min(f[k] - TARGETS[k] for k in f), float(np.mean(list(f.values()))))
        for (i, j), (margin, mean) in smoothed(grid).items():
            pairs.append((grid[(i, j)][0], margin, mean, (w, wf), float(cands[i]), float(cands[j])))
    top = max(p[0] for p in pairs)
    near_best = [p for p in pairs if p[0] >= top - TOLERANCE]
    centres = [centre([p for p in near_best if p[3] == b]) for b in blends]
    _, _, _, (w, wf), t, tr = max((c for c in centres if c is not None), key=lambda p: (p[1], p[2]))
    spec = rejection.model_copy(
        update={
            "evidence": "logit",
            "score_weight": w,
            "full_score_weight": wf,
            "threshold": t,
            "region_threshold": tr,
        }
    )
    return (
        spec,
        figures(_pad(frames, labels, spec), t, tr, abstain),
        "middle of the best thresholds on validation frames",
    )


__all__ = [
    "FULL_WEIGHTS",
    "TARGETS",
    "WEIGHTS",
    "FrameFeatures",
    "FrameSignals",
    "RegionSource",
    "centre",
    "choose_thresholds",
    "figures",
    "frame_features",
    "second_look_features",
    "signals",
    "smoothed",
    "whole_view_weight",
]
