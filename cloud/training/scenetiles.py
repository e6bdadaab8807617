"""Training rows from wide scenes: the regions a box classifies, labelled by what they hold.

Close-up photos teach the head what a cat looks like when it fills the picture. A park camera's
tile holds a pet at a third of its height among paths and benches, or nothing but background.
So the head also trains on tiles of scenes built (by ``cloud.evaluation.scenes``) from
*training* pets on *training* ``none`` backgrounds, colour and greyscale: a tile holding most
of the pet, large enough to see, is that pet; a tile that barely touches it, or any tile of an
empty scene, is ``none``; anything in between is left out rather than guessed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud.evaluation.scenes import SceneSpec, render
from cloud.training.batches import BackboneBatches, save_npz
from edge.perception.config import RegionsConfig
from edge.perception.pipeline import region_tensors
from edge.perception.regions import Region, plan_regions
from edge.preprocess import Preprocessor
from shared.modelpkg import PreprocessSpec

F32 = npt.NDArray[np.float32]
CACHE_VERSION = "scenetiles-v1"
MIN_COVER = 0.6  # share of the pet inside the tile for a pet row
MIN_HEIGHT = 0.25  # pet height / tile side for a pet row
MAX_TOUCH = 0.05  # share of the tile the pet may cover in a none row
NEG_PER_PET_SCENE = 2
NEG_PER_EMPTY_SCENE = 3


def tile_rows(spec: SceneSpec, regions: Sequence[Region], rng: np.random.Generator) -> list[tuple[int, str]]:
    """(region index, label) rows of one scene; pure."""
    pos: list[tuple[int, str]] = []
    neg: list[int] = []
    for k, r in enumerate(regions):
        if r.source == "full":
            continue
        if spec.box is None:
            neg.append(k)
            continue
        x, y, w, h = spec.box
        ix = max(0, min(r.x + r.w, x + w) - max(r.x, x))
        iy = max(0, min(r.y + r.h, y + h) - max(r.y, y))
        inter = ix * iy
        if inter >= MIN_COVER * w * h and h >= MIN_HEIGHT * r.h:
            pos.append((k, spec.label))
        elif inter <= MAX_TOUCH * r.w * r.h:
            neg.append(k)
    n_neg = NEG_PER_EMPTY_SCENE if spec.box is None else NEG_PER_PET_SCENE
    picked: list[int] = [int(i) for i in rng.permutation(len(neg))[:n_neg]]
    return pos + [(neg[i], "none") for i in sorted(picked)]


def scene_rows(
    specs: Sequence[SceneSpec],
    cfg: RegionsConfig,
    spec: PreprocessSpec,
    backbone: Callable[[F32], F32],
    backbone_id: str,
    cache_dir: Path,
    seed: int,
    batch: int = 48,
    progress: Callable[[int], None] | None = None,
) -> tuple[F32, list[str]]:
    """Features and labels of the selected tiles of every scene (cached per scene)."""
    pre = Preprocessor(spec)
    feats: list[F32] = []
    labels: list[str] = []
    batches = BackboneBatches(backbone, batch, progress)

    def done(path: Path, labs: list[str]) -> Callable[[F32], None]:
        def store(f: F32) -> None:
            save_npz(path, feats=f, labels=np.array(labs))
            feats.append(f)
            labels.extend(labs)

        return store

    for i, s in enumerate(specs):
        key = json.dumps(
            [
                CACHE_VERSION,
                repr(s),
                seed,
                i,
                cfg.model_dump(mode="json"),
                spec.model_dump(mode="json"),
                backbone_id,
            ],
            sort_keys=True,
        )
        h = hashlib.sha256(key.encode()).hexdigest()[:32]
        path = cache_dir / h[:2] / f"{h}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                if len(z["labels"]):
                    feats.append(z["feats"])
                    labels.extend(str(v) for v in z["labels"])
            if progress:
                progress(1)
            continue
        except (OSError, ValueError, KeyError, EOFError):
            pass
        img = render(s)
        regions = plan_regions(s.size[0], s.size[1], cfg, spec)
        rows = tile_rows(s, regions, np.random.default_rng([seed, i]))
        if not rows:
            save_npz(path, feats=np.zeros((0, 1), np.float32), labels=np.array([], dtype=str))
            continue
        t = region_tensors(img, [regions[k] for k, _ in rows], pre)
        batches.add(t, done(path, [lab for _, lab in rows]))
    batches.flush()
    if not feats:
        return np.zeros((0, 0), np.float32), []
    return np.concatenate(feats).astype(np.float32), labels
