"""Hyperparameter search: which head configurations to try, and how to score them.

Grid search walks the whole space (capped by ``--trials`` when given); random search draws
``trials`` configurations. Both are deterministic for a seed, and the candidate order is
part of the run record so a rerun tries the same configurations in the same order.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

from cloud.training.config import SearchSpace
from cloud.training.head import HeadParams


def grid(space: SearchSpace) -> list[dict[str, Any]]:
    keys = list(SearchSpace.model_fields)
    values = [getattr(space, k) for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def candidates(space: SearchSpace, method: str, trials: int | None, seed: int) -> list[dict[str, Any]]:
    full = grid(space)
    rng = random.Random(seed)
    if method == "grid":
        if trials is None or trials >= len(full):
            return full
        picked = sorted(rng.sample(range(len(full)), trials))
        return [full[i] for i in picked]
    if method == "random":
        n = trials or len(full)
        return [{k: rng.choice(list(getattr(space, k))) for k in SearchSpace.model_fields} for _ in range(n)]
    raise ValueError(f"unknown search method {method!r}: use grid or random")


def to_params(cand: dict[str, Any], batch_size: int) -> HeadParams:
    return HeadParams(batch_size=batch_size, **cand)


def best_index(scores: Sequence[tuple[float, float]]) -> int:
    """Highest validation accuracy; ties go to the lower validation loss, then the earlier trial."""
    return min(range(len(scores)), key=lambda i: (-scores[i][0], scores[i][1], i))
