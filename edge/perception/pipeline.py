"""From a frame to a :class:`FrameResult`: plan regions, batch them, look closer, decide, aggregate.

Two passes: the planned regions, then the second look (``RegionsConfig.second_look``): the
strongest tiles cut into smaller squares, so a small pet is seen at a useful resolution. Both
passes' regions are decided and aggregated together.

Aggregation: a frame holds a pet when at least one region is a confident pet (its decision is
a pet label and its confidence reaches the abstain threshold); the frame's label is the pet of
the region with the most pet evidence, and every confident pet region is listed (a frame may
hold a cat and a dog). A frame is ``none`` only when every region is a sure ``none``; any
borderline region makes it ``abstain``. Because one false region makes a false frame, the
thresholds of the many tiles are stricter than the whole-frame view's (``region_threshold``),
and both were chosen on validation frames, not per region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from edge.model import LoadedModel, ModelOutput
from edge.perception.config import RegionsConfig
from edge.perception.ir import is_ir
from edge.perception.regions import CLOSER_FROM, Box, Region, Zone, closer, plan_regions
from edge.preprocess import Preprocessor, _as_bgr
from shared.modelpkg import ABSTAIN, NONE_LABEL, RejectionSpec
from shared.perception import closer_candidates, decide_on_evidence, pet_evidence

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
MAX_REPORTED = 8  # pet regions listed per frame


@dataclass(frozen=True)
class RegionResult:
    region: Region
    label: str
    confidence: float


@dataclass(frozen=True)
class FrameResult:
    label: str  # a pet label, "none" or "abstain"
    confidence: float
    probs: dict[str, float]
    regions: list[RegionResult] = field(default_factory=list)  # regions that held a pet
    ir: bool = False
    evaluated: int = 0  # regions classified for this frame


@dataclass(frozen=True)
class Aggregate:
    label: str
    confidence: float
    main: int  # the row whose probabilities stand for the frame
    pets: list[int]  # rows of confident pet regions, strongest first
    decisions: list[tuple[str, float]]


NESTED = 0.7  # share of the smaller box inside the larger one that makes two regions one find


def nested(a: Box, b: Box) -> bool:
    """One box mostly inside the other: the same pet seen by tiles of two scales."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    smaller = min(aw * ah, bw * bh)
    return smaller > 0 and ix * iy >= NESTED * smaller


def _box(r: Region) -> Box:
    return (r.x, r.y, r.w, r.h)


def same_find(a: Region, b: Region) -> bool:
    """Two regions that see the same pet: one mostly inside the other, or a second look's
    squares and the region they were cut from (siblings overlap, but not 70 %)."""
    if nested(_box(a), _box(b)):
        return True
    return (a.parent is not None and a.parent in (b.parent, _box(b))) or b.parent == _box(a)


def reported(regions: Sequence[Region], agg: Aggregate) -> list[RegionResult]:
    """The frame's pet regions as sent: strongest first, one per find. Multi-scale tiling sees a
    pet in a small tile and again in the larger tile around it, and a second look sees it again
    in the squares cut from that tile; listing them all would draw several boxes for one pet. A
    weaker region that is the same find as a kept one with the same label is dropped, unless it
    is a named zone (people asked about that area by name)."""
    kept: list[RegionResult] = []
    for k in agg.pets:
        r = RegionResult(regions[k], *agg.decisions[k])
        dup = r.region.source != "zone" and any(
            q.label == r.label and same_find(q.region, r.region) for q in kept
        )
        if not dup:
            kept.append(r)
        if len(kept) == MAX_REPORTED:
            break
    return kept


def aggregate(
    sources: Sequence[str],
    probs: F32,
    pet_score: F32 | None,
    labels: Sequence[str],
    rejection: RejectionSpec | None,
    threshold: float | None,
    region_threshold: float | None,
    abstain: float,
) -> Aggregate:
    """The frame's outcome from its regions' outputs. Pure, so the cloud picks thresholds with
    exactly the rule the box applies."""
    n = len(sources)
    full = [src == "full" for src in sources]
    base = None if rejection is None else rejection.threshold  # what an absent override means
    t, tr = (base if x is None else x for x in (threshold, region_threshold))
    per_row = None if t is None or tr is None else [t if f else tr for f in full]
    ev = pet_evidence(probs, pet_score, labels, rejection, full=full)
    decisions = decide_on_evidence(probs, ev, labels, rejection, per_row)
    strength = np.ones(n, dtype=np.float64) if ev is None else ev.astype(np.float64)
    pets = [k for k, (lab, _) in enumerate(decisions) if lab != NONE_LABEL]
    sure = [k for k in pets if decisions[k][1] >= abstain]
    if sure:
        ranked = sorted(sure, key=lambda k: strength[k] * decisions[k][1], reverse=True)
        return Aggregate(decisions[ranked[0]][0], decisions[ranked[0]][1], ranked[0], ranked, decisions)
    if pets:  # a pet, but not sure which: abstain with the strongest one's figures
        best = max(pets, key=lambda k: strength[k])
        return Aggregate(ABSTAIN, decisions[best][1], best, [], decisions)
    # Every region says none: the frame is as sure as its least sure region.
    weakest = min(range(n), key=lambda k: decisions[k][1])
    conf = decisions[weakest][1]
    main = next((k for k, src in enumerate(sources) if src == "full"), weakest)
    return Aggregate(NONE_LABEL if conf >= abstain else ABSTAIN, conf, main, [], decisions)


def region_tensors(image: U8, regions: Sequence[Region], pre: Preprocessor) -> F32:
    """Model input for each region: the package's own preprocessing for the whole-frame view,
    a square crop brought to the input size for the others."""
    img = _as_bgr(image)
    spec = pre.spec
    pics = [
        pre.geometry(img) if r.source == "full" else crop_input(img, r, spec.input_size, spec.interpolation)
        for r in regions
    ]
    return pre.normalise(np.stack(pics))


def crop_input(image: U8, region: Region, size: tuple[int, int], interpolation: str) -> U8:
    """One region as a model-sized BGR picture. Shrinking more than 2x uses area averaging: a
    720-pixel tile brought to 224 by bilinear sampling aliases fur into noise."""
    out_h, out_w = size
    crop = image[region.y : region.y + region.h, region.x : region.x + region.w]
    shrink = min(crop.shape[0] / out_h, crop.shape[1] / out_w)
    interp = cv2.INTER_AREA if shrink > 2 else _INTERP[interpolation]
    return np.asarray(cv2.resize(crop, (out_w, out_h), interpolation=interp), dtype=np.uint8)


class FramePipeline:
    def __init__(self, model: LoadedModel, cfg: RegionsConfig | None, abstain_threshold: float) -> None:
        self.model = model
        self.cfg = cfg or RegionsConfig()
        self.abstain = abstain_threshold
        rej = model.metadata.rejection
        self.rejection = rej
        self.can_reject = rej is not None and rej.active
        base = rej.threshold if rej is not None else None
        self.threshold = self.cfg.threshold if self.cfg.threshold is not None else base
        region = rej.region_threshold if rej is not None and rej.region_threshold is not None else base
        self.region_threshold = self.cfg.region_threshold if self.cfg.region_threshold is not None else region

    def plan(
        self, image: U8, motion: Sequence[Box] | None = None, zones: Sequence[Zone] = ()
    ) -> list[Region]:
        h, w = image.shape[:2]
        return plan_regions(w, h, self.cfg, self.model.spec, motion, zones, self.can_reject)

    def tensors(self, image: U8, regions: Sequence[Region]) -> F32:
        return region_tensors(image, regions, self.model.preprocessor)

    def second_look(self, regions: Sequence[Region], out: ModelOutput) -> list[Region]:
        """The closer squares of the first pass's strongest regions (none when switched off)."""
        if not self.cfg.enabled or self.cfg.second_look <= 0:
            return []
        eligible = [r.source in CLOSER_FROM for r in regions]
        picks = closer_candidates(
            out.probs, out.pet_score, self.model.labels, self.rejection, eligible, self.cfg.second_look
        )
        return [z for k in picks for z in closer(regions[k], self.cfg)]

    def finish(self, image: U8, regions: Sequence[Region], out: ModelOutput) -> FrameResult:
        n = len(regions)
        if out.probs.shape[0] != n:
            raise ValueError(f"{out.probs.shape[0]} output rows for {n} regions")
        agg = aggregate(
            [r.source for r in regions],
            out.probs,
            out.pet_score,
            self.model.labels,
            self.rejection,
            self.threshold,
            self.region_threshold,
            self.abstain,
        )
        probs = {
            lab: round(float(p), 6) for lab, p in zip(self.model.labels, out.probs[agg.main], strict=True)
        }
        return FrameResult(
            label=agg.label,
            confidence=round(agg.confidence, 6),
            probs=probs,
            regions=reported(regions, agg),
            ir=is_ir(image),
            evaluated=n,
        )

    def classify(self, images: list[U8]) -> list[FrameResult]:
        """Stills: plan (tiles, no motion), one batched run over every region, one more over
        every frame's second look, finish each."""
        if not images:
            return []
        plans = [self.plan(img) for img in images]
        outs = split(self.model.run_full(self._batch(images, plans)), [len(p) for p in plans])
        plans, outs, _ = self.look_closer(images, plans, outs, self.model.run_full)
        return [self.finish(img, p, o) for img, p, o in zip(images, plans, outs, strict=True)]

    def look_closer(
        self,
        images: Sequence[U8],
        plans: Sequence[list[Region]],
        outs: Sequence[ModelOutput],
        run: Callable[[F32], ModelOutput],
    ) -> tuple[list[list[Region]], list[ModelOutput], int]:
        """The second pass of a batch of frames: every frame's closer squares in one ``run``.
        Each frame's regions and outputs come back with its squares appended, with the number
        of rows that second run took (0: nothing worth a second look)."""
        looks = [self.second_look(p, o) for p, o in zip(plans, outs, strict=True)]
        if not any(looks):
            return list(plans), list(outs), 0
        more = split(run(self._batch(images, looks)), [len(z) for z in looks])
        return (
            [p + z for p, z in zip(plans, looks, strict=True)],
            [join(o, m) for o, m in zip(outs, more, strict=True)],
            sum(len(z) for z in looks),
        )

    def _batch(self, images: Sequence[U8], plans: Sequence[Sequence[Region]]) -> F32:
        return np.concatenate([self.tensors(img, p) for img, p in zip(images, plans, strict=True) if p])


def split(out: ModelOutput, sizes: Sequence[int]) -> list[ModelOutput]:
    """One batched output cut back into each frame's rows."""
    parts: list[ModelOutput] = []
    start = 0
    for n in sizes:
        score = None if out.pet_score is None else out.pet_score[start : start + n]
        parts.append(ModelOutput(out.probs[start : start + n], score))
        start += n
    return parts


def join(a: ModelOutput, b: ModelOutput) -> ModelOutput:
    """A frame's first-pass rows followed by its second look's."""
    score = None if a.pet_score is None or b.pet_score is None else np.concatenate([a.pet_score, b.pet_score])
    return ModelOutput(np.concatenate([a.probs, b.probs]), score)
